"""Reading the pairs table (CSV/TSV) and dataset.json; torch-free so `dataset/` tools can use it too."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Data that cannot be used; the message names the file (and row) and what is wrong."""


PATH_COLUMN, CAPTION_COLUMN, LABEL_COLUMN = "filepath", "caption", "label"


def _delimiter(path: Path, header_line: str) -> str:
    if path.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    # A .txt/.csv whose header has tabs but no commas is a TSV too.
    return "\t" if "\t" in header_line and "," not in header_line else ","


def read_pairs_table(
    csv_path: str | Path,
    path_column: str = PATH_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> tuple[list[str], list[str], list[int] | None]:
    """Read (paths as written, captions, labels or None) from a CSV/TSV with a header row.

    Raises DataError naming the file when it is missing, lacks the columns, or holds a bad label.
    """
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise DataError(f"dataset file not found: {path} (expected a CSV/TSV with columns "
                        f"{path_column},{caption_column}[,{label_column}])")
    with path.open("r", encoding="utf-8-sig", newline="") as f:
        header_line = f.readline()
        f.seek(0)
        reader = csv.DictReader(f, delimiter=_delimiter(path, header_line))
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in (path_column, caption_column) if c not in columns]
        if missing:
            # The header is the file's first line: name what is wanted, never echo what the file holds.
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected a CSV/TSV whose header "
                            f"row names {path_column},{caption_column}[,{label_column}]")
        reader.fieldnames = columns
        has_labels = label_column in columns
        paths, captions, labels = [], [], []
        for row_no, row in enumerate(reader, start=2):
            file = (row.get(path_column) or "").strip()
            if not file:
                continue  # blank line or empty path: nothing to load, nothing to report
            paths.append(file)
            captions.append((row.get(caption_column) or "").strip())
            if has_labels:
                labels.append(_parse_label(row.get(label_column), path, row_no, label_column))
    return paths, captions, (labels if has_labels else None)


def _parse_label(raw: str | None, path: Path, row_no: int, column: str) -> int:
    raw = (raw or "").strip()
    if raw == "":
        return -1
    try:
        return int(raw)
    except ValueError:
        raise DataError(f"{path} line {row_no}: {column} must be an integer class index") from None


def read_dataset_info(folder: Path) -> dict[str, Any]:
    """dataset.json beside a CSV (written by `cliplab prepare`), or {} when absent."""
    info_path = folder / "dataset.json"
    if not info_path.is_file():
        return {}
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{info_path} is not valid JSON: {exc}") from exc
    return info if isinstance(info, dict) else {}
