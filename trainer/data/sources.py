"""The trainer's view of data.train / data.val: the contract's resolution, plus the demo dataset generated on
first use (the one source that needs writing before it can be read)."""

from __future__ import annotations

from pathlib import Path

from contract import sources
from dataset.demo import ensure_demo_dataset


def resolve_source(spec: str, split: str, data_dir: str | Path | None = None) -> tuple[str, str]:
    """("csv", path) or ("shards", pattern) for a data.train / data.val value; "demo" is generated first."""
    if spec == "demo":
        ensure_demo_dataset(data_dir)
    return sources.resolve_source(spec, split, data_dir)
