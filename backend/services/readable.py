"""Which folders the server reads and serves files from: its data dir plus the folders the admin lists
(CLIPLAB_READABLE_DIRS). Every path a client or a file on disk names is resolved (symlinks included) and
must land inside one of them; messages name the allowed roots, never the resolved target."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from contract.config import RunConfig

_PATTERN_START = re.compile(r"[{*?\[]")


def within(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path`, resolved, is one of `roots` (resolved) or inside one."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop; a NUL in a stored path
        return False
    return any(target == root or root in target.parents for root in (r.resolve() for r in roots))


def describe_roots(roots: Iterable[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def _looks_like_a_path(spec: str) -> bool:
    """A file or folder rather than a dataset or model name (`pets`, `openai`, `demo`)."""
    return "/" in spec or "\\" in spec or spec.startswith(("~", "."))


def _fixed_part(spec: str) -> Path:
    """The folder a shard pattern (dir/{000..009}.tar, dir/*.tar) reads from, or the path itself."""
    match = _PATTERN_START.search(spec)
    if match is None:
        return Path(spec)
    prefix = spec[:match.start()]
    return Path(prefix) if prefix.endswith(("/", "\\")) else Path(prefix).parent


def outside_readable_errors(cfg: "RunConfig", roots: list[Path], run_dir: Path) -> list[dict[str, Any]]:
    """One error per config path (data.train, data.val, model.pretrained) outside the readable roots,
    decided on the resolved path alone, so the answer is the same whether a file exists there or not.
    A relative model.pretrained is read from `run_dir`, where the trainer runs (a SLURM run's is under
    slurm.run_root, which may lie outside the data dir)."""
    fields = {"data.train": cfg.data.train, "data.val": cfg.data.val, "model.pretrained": cfg.model.pretrained}
    errors = []
    for field, spec in fields.items():
        if not spec or not _looks_like_a_path(spec):
            continue
        path = _fixed_part(spec).expanduser()
        if not path.is_absolute():
            if field != "model.pretrained":
                continue  # data paths must be absolute: the source check says so
            path = run_dir / path
        if not within(path, roots):
            errors.append({"field": field, "message": (
                f"{spec!r} is outside the folders this server may read ({describe_roots(roots)}); keep the "
                "file under one of them, or have the admin add its folder to CLIPLAB_READABLE_DIRS")})
    return errors
