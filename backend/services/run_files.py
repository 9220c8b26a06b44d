"""Files in a run directory: the stdout.log tail, checkpoints (listing and download).

Every path a client names is resolved (symlinks included) and must stay inside the run directory.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from backend import store
from backend.errors import Invalid, NotFound
from backend.models import Run
from backend.services import metrics
from backend.services.readable import within
from contract.run_dir import CHECKPOINTS_DIR, POINTERS, complete_step_dirs, read_pointer, step_of

if TYPE_CHECKING:
    from backend.services.container import Services

CHUNK = 1 << 20
_STEP_RE = re.compile(r"(\d+)$")


def confined(root: Path, *parts: str) -> Path:
    """root/parts resolved, or NotFound when it would leave root (`..`, absolute parts, symlinks out)."""
    root = root.resolve()
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\0" in part or os.path.isabs(part):
            raise NotFound(f"{part!r} is not a file or folder name inside the run directory")
    try:
        target = root.joinpath(*parts).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise NotFound(f"{'/'.join(parts)!r} cannot be resolved inside the run directory") from None
    if target != root and root not in target.parents:
        raise NotFound(f"{'/'.join(parts)!r} resolves outside the run directory")
    return target


def _is(path: Path, kind: str) -> bool:
    """path.is_file() / is_dir(), False where the name cannot be a file (too long for the file system)."""
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except OSError:
        return False


def served_run_dir(run_dir: Path, attached: bool, readable_roots: list[Path]) -> Path | None:
    """The run directory the server may read files from, or None. A launched run's is the server's own; an
    attached run's was named by its trainer (maybe on another machine), so it is read only inside the
    readable folders, like any path a run names."""
    if attached and not within(run_dir, readable_roots):
        return None
    return run_dir


def run_log_tail(run_dir: Path, path: Path, n: int) -> list[str]:
    """The last n lines of the run's log file (stdout.log, or where its executor writes), which must be a file
    inside the run directory."""
    if path.exists() and not within(path, [run_dir]):
        return [f"({path.name} links outside the run directory; not shown)"]
    return tail_lines(path, n)


def tail_lines(path: Path, n: int) -> list[str]:
    """The last n lines of a text file, reading backwards from the end (logs can be large)."""
    if n <= 0 or not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        pos, data = f.tell(), b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _pointer(ckpt_dir: Path, name: str) -> str | None:
    """The folder name a `latest`/`best` pointer names (contract.run_dir.read_pointer's rule); None when it
    names none of this run's checkpoint folders (a link to another file must not be read out through us)."""
    target = read_pointer(ckpt_dir, name)
    return target.name if target is not None else None


def _announced_kind(kind: str | None) -> str:
    # `latest`/`best` move on: only the pointer files say which folder holds them now.
    return kind if kind and kind not in ("latest", "best") else "checkpoint"


def list_checkpoints(run_dir: Path, recorded: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Checkpoint folders present under run_dir/checkpoints, oldest first.

    `kind` is latest/best (or both, "latest,best") when the pointer files name the folder, else the kind the
    trainer announced in its `checkpoint` event (wise_ft, ...), else "checkpoint" (an older one still kept);
    `resumable` says a resume can start there (`resumable_steps`); `recorded` maps folder name -> that event's
    fields.
    """
    ckpt_dir = run_dir / CHECKPOINTS_DIR
    if not ckpt_dir.is_dir():
        return []
    latest, best = _pointer(ckpt_dir, "latest"), _pointer(ckpt_dir, "best")
    resumable = set(resumable_steps(run_dir))
    out = []
    for entry in sorted(ckpt_dir.iterdir()):
        if not entry.is_dir() or entry.is_symlink():
            continue
        rec = recorded.get(entry.name, {})
        kinds = [k for k, ptr in (("latest", latest), ("best", best)) if ptr == entry.name]
        match = _STEP_RE.search(entry.name)
        step = rec.get("step") if rec.get("step") is not None else (int(match.group(1)) if match else None)
        try:
            size, files = _dir_size(entry), sorted(p.name for p in entry.iterdir() if p.is_file())
        except FileNotFoundError:  # the trainer removed it (keep_last) or renamed it into place meanwhile
            continue
        out.append({"name": entry.name, "step": step, "kind": ",".join(kinds) or _announced_kind(rec.get("kind")),
                    "size_bytes": size, "files": files, "resumable": entry.name in resumable})
    out.sort(key=lambda c: (c["step"] is None, c["step"] or 0, c["name"]))
    return out


def resumable_steps(run_dir: Path) -> list[str]:
    """The names of the run's complete step directories, oldest first (contract.run_dir.complete_step_dirs, the
    ones `cliplab train --resume PATH` continues from)."""
    return [path.name for path in complete_step_dirs(run_dir / CHECKPOINTS_DIR)]


def resume_point(run_dir: Path, name: str) -> str:
    """The step directory a resume from checkpoint `name` starts in: `name` itself when it is one of the run's
    complete step directories, or the one `latest`/`best` names; else Invalid (field `checkpoint`) naming them."""
    complete = resumable_steps(run_dir)
    target = _pointer(run_dir / CHECKPOINTS_DIR, name) if name in POINTERS else name
    if target in complete:
        confined(run_dir, CHECKPOINTS_DIR, target)  # a plain folder name listed above: never outside the run dir
        return target
    listed = f"its complete ones: {', '.join(complete)}" if complete else "it has no complete checkpoint"
    if name in POINTERS:
        problem = f"this run's {name} names no complete step directory" if target else f"this run has no {name}"
    elif step_of(name) is None:
        problem = f"{name!r} is not a step directory name (step_000100), latest or best"
    else:
        problem = f"{name!r} is not a complete step directory of this run"
    raise Invalid.one("checkpoint", f"{problem}; {listed}")


def _step_name(run_dir: Path, name: str) -> str:
    """`latest` and `best` mean the folder their pointer file names (as in `cliplab train --resume latest`)."""
    if name not in ("latest", "best"):
        return name
    target = _pointer(run_dir / CHECKPOINTS_DIR, name)
    if target is None:  # missing, or not a pointer we may follow: its content is never echoed
        pointer = run_dir / CHECKPOINTS_DIR / name
        if pointer.exists() or pointer.is_symlink():
            raise NotFound(f"checkpoints/{name} of this run does not name one of its checkpoint folders")
        raise NotFound(f"this run has no {name} checkpoint yet")
    return target


def checkpoint_file(run_dir: Path, name: str, file: str) -> Path:
    path = confined(run_dir, CHECKPOINTS_DIR, _step_name(run_dir, name), file)
    if not _is(path, "file"):
        raise NotFound(f"checkpoint {name!r} has no file {file!r}")
    return path


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    path = confined(run_dir, CHECKPOINTS_DIR, _step_name(run_dir, name))
    if not _is(path, "dir"):
        raise NotFound(f"no checkpoint {name!r} in this run")
    return path


def stream_tar(folder: Path) -> Iterator[bytes]:
    """An uncompressed tar of `folder`'s regular files, produced chunk by chunk (weights do not compress
    and may be gigabytes, so nothing is built in memory or on disk first)."""
    root = folder.resolve()
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() or not path.is_file() or root not in path.resolve().parents:
            continue
        stat = path.stat()
        info = tarfile.TarInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}")
        info.size, info.mtime, info.mode = stat.st_size, int(stat.st_mtime), 0o644
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        with path.open("rb") as f:
            while sent < info.size:
                chunk = f.read(min(CHUNK, info.size - sent))
                if not chunk:  # the file shrank while we read it: pad so the archive stays well-formed
                    chunk = b"\0" * (info.size - sent)
                sent += len(chunk)
                yield chunk
        if info.size % tarfile.BLOCKSIZE:
            yield b"\0" * (tarfile.BLOCKSIZE - info.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


# ---- what the run routes serve ----------------------------------------------------------------------------


def served_dir_of(svc: "Services", run: Run) -> Path | None:
    """`served_run_dir` of a run under this server's readable folders."""
    return served_run_dir(Path(run.run_dir), run.attached, svc.settings.readable_roots)


def run_logs(svc: "Services", run: Run, tail: int) -> dict[str, Any]:
    """The last `tail` lines of the trainer's output (stdout.log; a SLURM job's --output file) and the last
    `tail` `log` events."""
    run_dir = served_dir_of(svc, run)
    return {
        "lines": run_log_tail(run_dir, svc.launcher.log_path(run), tail) if run_dir else [],
        "events": svc.read(metrics.recent_log_events, run.id, tail),
    }


def run_checkpoints(svc: "Services", run: Run) -> list[dict[str, Any]]:
    """`list_checkpoints` of the run's served directory, with what its `checkpoint` events recorded."""
    recorded = {r.name: {"step": r.step, "kind": r.kind} for r in svc.read(store.checkpoints_of, run.id)}
    run_dir = served_dir_of(svc, run)
    return list_checkpoints(run_dir, recorded) if run_dir else []
