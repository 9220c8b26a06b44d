"""Which folders the server reads and serves files from: its data dir plus the folders the admin lists
(CLIPLAB_READABLE_DIRS). Every path a client or a file on disk names is resolved (symlinks included) and
must land inside one of them; messages name the allowed roots, never the resolved target."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path`, resolved, is one of `roots` (resolved) or inside one."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return any(target == root or root in target.parents for root in (r.resolve() for r in roots))


def describe_roots(roots: Iterable[Path]) -> str:
    return ", ".join(str(r) for r in roots)
