"""A run's checkpoints/ folder on disk: step directories written atomically, the latest/best pointers,
pruning, and finding the checkpoint a resume starts from. What goes into a checkpoint is the Checkpointer's
business (trainer/training/checkpointer.py); this module only stores it.

Layout (docs/architecture.md, contract.run_dir):
    <run_dir>/checkpoints/step_000100/  model.safetensors + model.json (trainer.checkpoint.save_model)
                                        train_state.pt (optimizer, scheduler, step, RNG, data position, ...)
                                        SHA256SUMS (`sha256sum -c` format, over every other file; written last)
    <run_dir>/checkpoints/latest        text: the step directory name of the newest checkpoint
    <run_dir>/checkpoints/best          text: the step directory name of the best-by-metric checkpoint

A step directory is assembled under a temporary name, its files and itself fsync'ed, renamed into place and
checkpoints/ fsync'ed; the pointer files are replaced the same way. So a crash of the process or of the machine
at any moment leaves either the old or the new checkpoint, never half of one, and a resume checks the files
against SHA256SUMS, so damage done later (a flipped bit, a partial copy) is reported instead of trained on.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from contract.config import ConfigError, RunConfig, load_config
from contract.run_dir import (
    BEST,
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    LATEST,
    POINTERS,
    TRAIN_STATE,
    complete_step_dirs,
    pointer_name,
    read_pointer,
    resolve_pointer,
    step_dir_name,
    step_of,
)
from trainer.checkpoint import CheckpointError, verify_checkpoint_dir, weights_only_refusal
from trainer.integrity import fsync_dir, fsync_file, fsync_tree, write_manifest


def _write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` by a file holding `text`, durably: the new content is on the disk before the rename, and
    the rename is before this returns."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _seal(directory: Path) -> None:
    """A finished temporary step directory: SHA256SUMS over its files (last), then all of it on the disk."""
    write_manifest(directory)
    fsync_tree(directory)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing an older `dst` (a rename, so never half-written),
    and fsync their folder so the new name survives a crash of the machine."""
    if dst.exists():
        old = dst.with_name(f".tmp-old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        fsync_dir(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
        fsync_dir(dst.parent)


class CheckpointFolder:
    """Writes, lists, prunes and resolves the checkpoints of one run directory (call on rank 0 only)."""

    def __init__(self, run_dir: str | os.PathLike, keep_last: int = 2):
        self.dir = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last

    def clean_partial(self) -> None:
        """Remove temporary directories left by a process killed while saving. A step that was being replaced
        (saved a second time) and was killed between _replace_dir's two renames survives only as its
        `.tmp-old-` copy: that one is put back, or `latest` would name a step that is gone."""
        if not self.dir.is_dir():
            return
        for p in self.dir.glob(".tmp-old-*"):
            final = self.dir / p.name.removeprefix(".tmp-old-").rsplit("-", 1)[0]
            if step_of(final.name) is not None and not final.exists():
                os.replace(p, final)
        for p in self.dir.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)

    def save(self, step: int, save_weights: Callable[[Path], None], train_state: dict[str, Any],
             best: bool = False) -> Path:
        """Write step_<step>/ (weights via `save_weights(directory)`, then train_state.pt, then SHA256SUMS over
        every file there) and point `latest` (and `best` when `best`) at it; returns the step directory.
        Re-saving a step replaces it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = step_dir_name(step)
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_weights(tmp)
            tmp.mkdir(parents=True, exist_ok=True)
            torch.save(train_state, tmp / TRAIN_STATE)
            _seal(tmp)
        except Exception as exc:  # a full disk (torch.save says RuntimeError): free what the step took
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._write_error(name, exc) from exc
        _replace_dir(tmp, final)
        _write_text_atomic(self.dir / LATEST, name + "\n")
        if best:
            _write_text_atomic(self.dir / BEST, name + "\n")
        self.prune()
        return final

    def _write_error(self, name: str, exc: Exception) -> OSError:
        """The error of a checkpoint that could not be written, saying which checkpoint is still there."""
        previous = self.pointer(LATEST)
        kept = f"{LATEST} still names {previous.name}" if previous is not None else "no earlier checkpoint"
        why = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
        message = f"cannot write checkpoint {self.dir / name} ({why}); {kept}"
        errno = getattr(exc, "errno", None)
        return OSError(errno, message) if errno else OSError(message)

    def save_weights(self, name: str, save_weights: Callable[[Path], None]) -> Path:
        """Write a weights-only directory checkpoints/<name>/ (e.g. wise_ft, with its SHA256SUMS), replacing any
        previous one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_weights(tmp)
        _seal(tmp)
        _replace_dir(tmp, final)
        return final

    def pointer(self, which: str) -> Path | None:
        """The step directory `latest` or `best` names, or None when there is none (or it is gone)."""
        target = read_pointer(self.dir, which)
        return target if target is not None and (target / TRAIN_STATE).is_file() else None

    def step_dirs(self) -> list[Path]:
        """Complete step directories, oldest first (contract.run_dir.complete_step_dirs)."""
        return complete_step_dirs(self.dir)

    def prune(self) -> None:
        """Keep the newest `keep_last` step directories up to `latest`, plus whatever `latest` and `best` point
        at. Step directories past `latest` go: a save is always the newest step, so they are what a resume from
        an older step (a rewind) left behind, and the run has now saved on its own branch."""
        latest, best = self.pointer(LATEST), self.pointer(BEST)
        dirs = self.step_dirs()
        current = [p for p in dirs if latest is None or step_of(p.name) <= step_of(latest.name)]
        keep = set(current[-self.keep_last:])
        keep.update(p for p in (latest, best) if p is not None and p in current)
        for p in dirs:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)
        if best is not None and best not in keep:  # it named an abandoned step, removed above
            (self.dir / BEST).unlink(missing_ok=True)

    def rewind(self, step_dir: Path, best_step: int | None) -> list[str]:
        """A resume from `step_dir`, one of this folder's step directories older than `latest` names: `latest`
        names it from now on (a resume that fails before its first save starts there again), and a `best` that
        names a newer step names the best at or before it (`best_step`, the resumed best tracker's) or, when
        that directory is gone, nothing until an eval improves. The newer step directories stay until this
        run's first save prunes them (or re-saving a step replaces it). Returns their names, oldest first."""
        step = step_of(step_dir.name)
        if step is None or step_dir.resolve().parent != self.dir.resolve():
            return []  # another run's checkpoint, continued into this run dir
        abandoned = [p.name for p in self.step_dirs() if step_of(p.name) > step]
        if pointer_name(self.dir / LATEST) != step_dir.name:
            _write_text_atomic(self.dir / LATEST, step_dir.name + "\n")
        best = pointer_name(self.dir / BEST)
        if best is not None and step_of(best) > step:
            fallback = self.dir / step_dir_name(best_step) if best_step is not None and best_step <= step else None
            if fallback is not None and (fallback / TRAIN_STATE).is_file():
                _write_text_atomic(self.dir / BEST, fallback.name + "\n")
            else:
                (self.dir / BEST).unlink(missing_ok=True)
                fsync_dir(self.dir)
        return abandoned


def resolve_resume(spec: str, run_dir: str | os.PathLike | None) -> Path:
    """`--resume latest|PATH` -> a step directory holding train_state.pt.

    PATH may be a step directory, a run directory or its checkpoints/ folder (both meaning its `latest`).
    Raises FileNotFoundError naming what was looked for.
    """
    if spec == "latest":
        if run_dir is None:
            raise FileNotFoundError("--resume latest needs --run-dir (the run whose latest checkpoint to continue)")
        base = Path(run_dir)
    else:
        base = Path(spec)
        if (base / TRAIN_STATE).is_file():
            return base
        if base.is_file():
            return _resume_file(spec, base)
    run = base.parent if base.name == CHECKPOINTS_DIR else base
    folder = CheckpointFolder(run)
    target = folder.pointer(LATEST)
    if target is not None:
        return target
    # `latest` may name a step directory that was deleted or never completed while older ones remain.
    complete = folder.step_dirs()
    hint = (f"; {LATEST} names none that is complete, but {complete[-1]} is: pass it as --resume PATH"
            if complete else "")
    raise FileNotFoundError(
        f"--resume {spec}: no checkpoint found at {base} (expected a step directory with {TRAIN_STATE}, "
        f"or a run directory whose {CHECKPOINTS_DIR}/{LATEST} names one){hint}"
    )


def _resume_file(spec: str, path: Path) -> Path:
    """--resume given a file: a checkpoints/latest or best pointer means the step directory it names; any other
    file holds weights at most, which start a new run (model.pretrained) rather than continue one."""
    target = resolve_pointer(path) if path.name in POINTERS else None
    if target is not None and (target / TRAIN_STATE).is_file():
        return target
    if path.name in POINTERS:
        complete = [p.name for p in CheckpointFolder(path.parent.parent).step_dirs()]  # path: <run>/checkpoints/x
        hint = f"; complete ones: {', '.join(complete)}" if complete else ""
        raise FileNotFoundError(f"--resume {spec}: it names {pointer_name(path) or 'no step directory'}, which is "
                                f"not a complete step directory in {path.parent}{hint}")
    raise FileNotFoundError(f"--resume {spec}: a file, not a training checkpoint (a step directory with "
                            f"{TRAIN_STATE}); to start a new run from its weights use --set model.pretrained={spec}")


def run_dir_of(step_dir: Path) -> Path:
    """<run_dir>/checkpoints/step_N -> <run_dir>."""
    return step_dir.resolve().parent.parent


def saved_config(run_dir: Path) -> RunConfig | None:
    """The config a run last trained with (its config.yaml, rewritten only once a resume is built), or None
    where it has none readable: the checkpoint alone then says what fits it."""
    try:
        return load_config(run_dir / CONFIG_FILE, [])
    except (ConfigError, OSError):
        return None


def verify_for_resume(step_dir: Path, names: list[str] | None = None) -> bool:
    """Check `step_dir` against its SHA256SUMS (every file it lists, or only `names`); False when it has none
    (written by an older cliplab). Raises CheckpointError naming the damaged file and, never falling back on its
    own, the other complete step directory to pass as --resume PATH instead."""
    try:
        return verify_checkpoint_dir(step_dir, names)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}{_resume_instead(step_dir)}") from None


def _resume_instead(damaged: Path) -> str:
    """What to resume from instead of the step directory `damaged`: the newest complete one before it (else the
    newest other one) in the same checkpoints/ folder, unchecked until it is loaded."""
    folder = damaged.resolve().parent
    others = ([p for p in CheckpointFolder(folder.parent).step_dirs() if p.name != damaged.name]
              if folder.name == CHECKPOINTS_DIR else [])
    if not others:
        return f"; {folder} holds no other complete step directory to resume from"
    step = step_of(damaged.name)
    older = [p for p in others if step is not None and step_of(p.name) < step]
    pick = (older or others)[-1]
    rest = [p.name for p in others if p != pick]
    also = f" (also complete: {', '.join(rest)})" if rest else ""
    return f"; to continue from {pick.name} instead, pass --resume {pick}{also}"


def load_train_state(step_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """Read train_state.pt (tensors on CPU; weights_only, so a checkpoint cannot run code), checked against the
    step directory's SHA256SUMS when it has one (`verify=False`: the caller checked the whole directory)."""
    path = step_dir / TRAIN_STATE
    if verify:
        verify_for_resume(step_dir, [TRAIN_STATE])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; name the file instead of a traceback
        if (refusal := weights_only_refusal(path, exc)) is not None:
            raise refusal from None
        hint = "the file is empty" if path.is_file() and not path.stat().st_size else "truncated or corrupt?"
        raise CheckpointError(f"cannot read {path} ({hint}): {type(exc).__name__}: {exc}; resume from another "
                              f"step directory of {step_dir.parent}") from exc
