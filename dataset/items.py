"""One image-caption pair as the preparation steps (collect, check, split, write) pass it along."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Item:
    """One image-caption pair; `path` is absolute, `label` indexes `classes` (None when unlabelled)."""

    path: Path
    caption: str
    label: int | None = None
