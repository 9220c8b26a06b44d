"""A run's checkpoints/ folder on disk: step directories written atomically, the latest/best pointers,
pruning, and finding the checkpoint a resume starts from. What goes into a checkpoint is the Checkpointer's
business (trainer/training/checkpointer.py); this module only stores it.

Layout (docs/architecture.md, contract.run_dir):
    <run_dir>/checkpoints/step_000100/  model.safetensors + model.json (trainer.checkpoint.save_model)
                                        train_state.pt (optimizer, scheduler, step, RNG, data position, ...)
    <run_dir>/checkpoints/latest        text: the step directory name of the newest checkpoint
    <run_dir>/checkpoints/best          text: the step directory name of the best-by-metric checkpoint

A step directory is assembled under a temporary name and renamed into place, and the pointer files are
replaced atomically, so a crash at any moment leaves either the old or the new checkpoint, never half of one.
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
    pointer_name,
    read_pointer,
    resolve_pointer,
    step_dir_name,
    step_of,
)
from trainer.checkpoint import CheckpointError, weights_only_refusal

TRAIN_STATE = "train_state.pt"


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory `src` to `dst`, replacing an older `dst` (a rename, so never half-written)."""
    if dst.exists():
        old = dst.with_name(f".tmp-old-{dst.name}-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


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
        """Write step_<step>/ (weights via `save_weights(directory)`, then train_state.pt) and point `latest`
        (and `best` when `best`) at it; returns the step directory. Re-saving a step replaces it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        name = step_dir_name(step)
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_weights(tmp)
            tmp.mkdir(parents=True, exist_ok=True)
            torch.save(train_state, tmp / TRAIN_STATE)
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
        """Write a weights-only directory checkpoints/<name>/ (e.g. wise_ft), replacing any previous one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / name
        tmp = self.dir / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        save_weights(tmp)
        _replace_dir(tmp, final)
        return final

    def pointer(self, which: str) -> Path | None:
        """The step directory `latest` or `best` names, or None when there is none (or it is gone)."""
        target = read_pointer(self.dir, which)
        return target if target is not None and (target / TRAIN_STATE).is_file() else None

    def step_dirs(self) -> list[Path]:
        """Complete step directories, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(step, p) for p in self.dir.iterdir()
                 if (step := step_of(p.name)) is not None and (p / TRAIN_STATE).is_file()]
        return [p for _, p in sorted(found)]

    def prune(self) -> None:
        """Keep the newest `keep_last` step directories plus whatever `latest` and `best` point at."""
        dirs = self.step_dirs()
        keep = set(dirs[-self.keep_last:])
        keep.update(p for p in (self.pointer(w) for w in POINTERS) if p is not None)
        for p in dirs:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)


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


def load_train_state(step_dir: Path) -> dict[str, Any]:
    """Read train_state.pt (tensors on CPU; weights_only, so a checkpoint cannot run code)."""
    path = step_dir / TRAIN_STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files; name the file instead of a traceback
        if (refusal := weights_only_refusal(path, exc)) is not None:
            raise refusal from None
        hint = "the file is empty" if path.is_file() and not path.stat().st_size else "truncated or corrupt?"
        raise CheckpointError(f"cannot read {path} ({hint}): {type(exc).__name__}: {exc}; resume from another "
                              f"step directory of {step_dir.parent}") from exc
