"""One training at a time in a run directory: an exclusive lock on <run_dir>/.lock while the run trains.

Two trainings given one run directory (a second `--resume latest` while the first still runs, or two new
runs started with the same `--run-dir`) would interleave their events, metrics and checkpoints; the one that
comes second to the lock stops with a config error instead. The kernel drops a lock when its process ends,
however it ends, so a crash leaves nothing to clean up. Where there are no locks (no `fcntl`, or a
filesystem that refuses them) runs go unlocked.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
_held: dict[Path, IO[str]] = {}  # this process's locks: a Trainer built again in one process reuses its lock


def lock_run_dir(run_dir: Path) -> str | None:
    """Take `run_dir`'s lock for this process (making the folder); None when taken, else why it cannot be."""
    key = run_dir.resolve()
    if fcntl is None or key in _held:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_FILE, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        return (f"run directory {run_dir} is in use by another training ({holder}); wait for it to end, or "
                "train in another --run-dir")
    except OSError:  # a filesystem without locks (some network mounts): train unlocked rather than not at all
        f.close()
        return None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    _held[key] = f
    return None


def unlock_run_dir(run_dir: Path) -> None:
    """Let another training use `run_dir` (nothing happens when this process holds no lock on it)."""
    f = _held.pop(run_dir.resolve(), None)
    if f is not None:
        f.close()  # closing the file drops the lock


def is_locked(run_dir: Path) -> bool:
    """Whether a training holds `run_dir`'s lock now (False when nothing ever locked it, or off POSIX)."""
    if fcntl is None:
        return False
    try:
        f = open(run_dir / LOCK_FILE, encoding="utf-8")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no locks on this filesystem: nothing to tell
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return False
