"""The run directory's layout, and the one reader of its `latest` / `best` checkpoint pointers.

    <run_dir>/config.yaml          the resolved config the run trains with
    <run_dir>/events.jsonl         the event log (contract.events)
    <run_dir>/metrics.csv          one row per logged step
    <run_dir>/stdout.log           the launched trainer's output
    <run_dir>/checkpoints/step_000100/   one checkpoint (weights + train_state.pt: complete, a resume can start there)
    <run_dir>/checkpoints/latest   text: the step directory name of the newest checkpoint
    <run_dir>/checkpoints/best     text: the step directory name of the best-by-metric checkpoint

The trainer writes the pointers; the trainer (resume, `trainer.load` of a run), the CLI and the backend (which
checkpoint is latest, can a run resume) all read them through `read_pointer` / `resolve_pointer`, so they cannot disagree.
Standard library only: the backend imports this without torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from contract.events import EVENTS_FILE

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
STDOUT_LOG = "stdout.log"
CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
BEST = "best"
POINTERS = (LATEST, BEST)
STEP_DIR = re.compile(r"step_(\d+)")
TRAIN_STATE = "train_state.pt"  # in a step directory: the rest of the training state; a resume needs it
MAX_POINTER_BYTES = 256  # a pointer holds one short directory name; anything larger is not one

__all__ = ["BEST", "CHECKPOINTS_DIR", "CONFIG_FILE", "EVENTS_FILE", "LATEST", "METRICS_FILE", "POINTERS",
           "STDOUT_LOG", "STEP_DIR", "TRAIN_STATE", "checkpoints_dir", "complete_step_dirs", "pointer_name",
           "read_pointer", "resolve_pointer", "step_dir_name", "step_of"]


def step_dir_name(step: int) -> str:
    """100 -> "step_000100", the name of the checkpoint directory of that step."""
    return f"step_{step:06d}"


def step_of(name: str) -> int | None:
    """"step_000100" -> 100; None for a name that is not a step directory's (wise_ft, a temporary folder)."""
    match = STEP_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def complete_step_dirs(checkpoints: Path) -> list[Path]:
    """A checkpoints/ folder's complete step directories, oldest first: `step_<N>` folders (not links) holding
    train_state.pt, the ones a resume can start from; [] without the folder. The one rule the trainer (resume,
    pruning) and the server (which steps a run may be resumed from) share."""
    try:
        entries = list(checkpoints.iterdir())
    except OSError:
        return []
    found = []
    for path in entries:
        try:
            if (step := step_of(path.name)) is not None and not path.is_symlink() and (path / TRAIN_STATE).is_file():
                found.append((step, path))
        except OSError:  # a name the file system cannot hold, or a folder removed while listing
            continue
    return [path for _, path in sorted(found)]


def checkpoints_dir(run_or_checkpoints_dir: str | os.PathLike) -> Path:
    """A run directory or its checkpoints/ folder -> the checkpoints/ folder."""
    path = Path(run_or_checkpoints_dir)
    return path if path.name == CHECKPOINTS_DIR else path / CHECKPOINTS_DIR


def read_pointer(run_or_checkpoints_dir: str | os.PathLike, which: str) -> Path | None:
    """The step directory `checkpoints/<which>` (latest or best) names, as checkpoints/<step dir>, or None.

    `run_or_checkpoints_dir` is a run directory or its checkpoints/ folder. See `resolve_pointer` for the rule.
    """
    if which not in POINTERS:
        raise ValueError(f"pointer {which!r}: expected one of {', '.join(POINTERS)}")
    return resolve_pointer(checkpoints_dir(run_or_checkpoints_dir) / which)


def resolve_pointer(pointer: str | os.PathLike) -> Path | None:
    """The step directory the pointer file `pointer` names, as <its folder>/<step dir>, or None.

    A pointer is a small text file holding a step directory's name (surrounding whitespace ignored), or a
    symlink to such a directory. None when the pointer is missing, holds anything else (a path, another
    file's content), names a folder outside its own folder (also through a symlinked step directory), or
    names one that is gone. A pointer's content is never returned as text, so a link to some other file
    cannot be read out through it.
    """
    pointer = Path(pointer)
    name = pointer_name(pointer)
    if name is None:
        return None
    target = pointer.parent / name
    try:
        inside = target.resolve().parent == pointer.parent.resolve()
        return target if inside and target.is_dir() else None
    except OSError:  # a link loop: as good as missing
        return None


def pointer_name(pointer: str | os.PathLike) -> str | None:
    """The step directory name the pointer file `pointer` holds (or its symlink leads to), whether or not that
    directory exists; None when `pointer` is no pointer (missing, too large, other content, a link elsewhere)."""
    pointer = Path(pointer)
    try:
        name = _linked_name(pointer) if pointer.is_symlink() else _written_name(pointer)
    except OSError:  # unreadable, or a link loop: as good as missing
        return None
    return name if name is not None and step_of(name) is not None else None


def _written_name(pointer: Path) -> str | None:
    """The directory name a regular pointer file holds, or None when it is no small regular file."""
    if not pointer.is_file() or pointer.stat().st_size > MAX_POINTER_BYTES:
        return None
    return pointer.read_bytes().decode("utf-8", errors="replace").strip()


def _linked_name(pointer: Path) -> str | None:
    """The name of the directory a symlinked pointer leads to, when that directory sits in the pointer's own
    folder; None for a link to anything else."""
    target = pointer.resolve()
    return target.name if target.parent == pointer.parent.resolve() else None
