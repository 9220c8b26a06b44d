"""Prepared datasets under <data_dir>/datasets/<name>/dataset.json: listing and previews.

A preview image is addressed by (dataset, split, row): the server only ever serves a file that the
dataset's own CSV lists, so no client-supplied path reaches the filesystem.
"""

from __future__ import annotations

import csv
import json
import random
from itertools import islice
from pathlib import Path
from typing import Any

from backend.errors import Invalid, NotFound
from backend.services.readable import within
from contract.datasets import IMAGE_EXTENSIONS, NAME_RULE, dataset_name_problem
from contract.text import has_surrogate

SPLITS = ("train", "val")


def dataset_dir(root: Path, name: str) -> Path:
    if dataset_name_problem(name) is not None:
        raise NotFound(f"dataset {name!r} not found (names are {NAME_RULE})")
    # The name has no separators, so root/name stays in root; not resolved, as a user may link a dataset
    # folder kept on another disk into the datasets dir.
    path = root / name
    if not (path / "dataset.json").is_file():
        raise NotFound(f"dataset {name!r} not found under {root}")
    return path


def _summary(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    splits = {s: str(path / f"{s}.csv") if (path / f"{s}.csv").is_file() else None for s in SPLITS}
    return {"name": path.name, "path": str(path), **splits, "counts": meta.get("counts") or {},
            "classes": meta.get("classes"), "source": meta.get("source"), "created": meta.get("created")}


def list_datasets(root: Path) -> list[dict[str, Any]]:
    if not root.is_dir():
        return []
    return [_summary(p) for p in sorted(root.iterdir()) if p.is_dir() and (p / "dataset.json").is_file()]


def _rows(path: Path, split: str, limit: int) -> list[dict[str, str]]:
    if split not in SPLITS:
        raise Invalid.one("split", f"must be one of {', '.join(SPLITS)}")
    csv_path = path / f"{split}.csv"
    if not csv_path.is_file():
        raise NotFound(f"dataset {path.name!r} has no {split}.csv")
    return _read_csv(csv_path, f"{split}.csv of dataset {path.name!r}", limit)


def _read_csv(csv_path: Path, what: str, limit: int) -> list[dict[str, str]]:
    """The first `limit` rows; a file that is not UTF-8 or has a field past the csv module's limit is a 422
    naming the file and line (undecodable bytes are kept as surrogates just long enough to find their line)."""
    rows: list[dict[str, str]] = []
    with csv_path.open(newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            for row in islice(reader, limit):
                if any(has_surrogate(v) for v in (*row.values(), *(reader.fieldnames or [])) if isinstance(v, str)):
                    raise Invalid.one("split", f"{what}, line {reader.line_num}: not UTF-8 text; "
                                               "save the file as UTF-8 (cliplab prepare writes UTF-8)")
                rows.append(row)
        except csv.Error as exc:
            # the reader counts a line once parsed, so the failing one is the next
            raise Invalid.one("split", f"{what}, line {reader.line_num + 1}: not a readable CSV row ({exc})") from None
    return rows


PREVIEW_ROWS = 10_000  # rows a preview samples from (and the only rows whose images it serves)


def preview(root: Path, name: str, n: int, split: str = "val") -> list[dict[str, Any]]:
    """n pairs drawn (with a fixed seed, so the preview is stable) from the split's first PREVIEW_ROWS rows:
    the first rows of a class-ordered CSV would show one or two classes only."""
    rows = _rows(dataset_dir(root, name), split, PREVIEW_ROWS)
    picked = _diverse_sample(rows, n) if len(rows) > n else range(len(rows))
    return [
        {"image_url": f"/api/datasets/{name}/images/{split}/{i}", "caption": rows[i].get("caption", ""),
         "label": rows[i].get("label")}
        for i in picked
    ]


def _diverse_sample(rows: list[dict[str, Any]], n: int) -> list[int]:
    """n row indices in a seeded random order, preferring rows whose class (or caption) is not shown yet."""
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    seen: set[str] = set()
    fresh, repeats = [], []
    for i in order:
        key = rows[i].get("label") or rows[i].get("caption", "")
        (repeats if key in seen else fresh).append(i)
        seen.add(key)
        if len(fresh) == n:
            break
    return sorted((fresh + repeats)[:n])


def preview_image(root: Path, name: str, split: str, row: int, max_row: int = PREVIEW_ROWS,
                  readable: list[Path] | None = None) -> Path:
    """The image file of CSV row `row` (0-based) of a dataset split: only a file that resolves (symlinks
    included) inside the dataset's folder or one of the `readable` roots (the server's data dir and the
    admin's CLIPLAB_READABLE_DIRS) is served."""
    path = dataset_dir(root, name)
    if row < 0:
        raise NotFound(f"row {row} is outside the previewable rows 0..{max_row - 1}")
    rows = _rows(path, split, min(row + 1, max_row))  # the cap keeps a huge row from reading a huge CSV
    if row >= len(rows):
        raise NotFound(f"{split}.csv of dataset {name!r} has only {len(rows)} rows" if len(rows) < max_row
                       else f"row {row} is outside the previewable rows 0..{max_row - 1}")
    image = Path(rows[row].get("filepath") or "")
    image = image if image.is_absolute() else path / image
    if image.suffix.lower() not in IMAGE_EXTENSIONS or not image.is_file():
        raise NotFound(f"row {row} of {split}.csv does not name a readable image")
    if not within(image, [path, *(readable or [])]):
        raise NotFound(f"row {row} of {split}.csv names an image outside the dataset's folder and the folders "
                       "this server may read (CLIPLAB_READABLE_DIRS); not served")
    return image.resolve()
