"""Reading the pairs table (CSV/TSV) and dataset.json; torch-free so `dataset/` tools can use it too."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
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


# csv.Error mostly means a value over csv's 128 KiB field limit; either way the rows are not what was meant.
CSV_ERROR_HINT = ("usually a '\"' that opens a value and is never closed, making the rest of the file one value "
                  "(write a quote inside a quoted value as \"\"); a caption that long is of no use either: CLIP "
                  "reads its first 77 tokens")


def read_table_text(path: Path) -> str:
    """A CSV/TSV's text (a BOM dropped, Windows and old Mac line ends as "\n"); DataError naming the line of
    a byte that is not UTF-8, and how to convert the file, or why the file cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: byte {data[exc.start:exc.start + 1]!r} is not UTF-8; save the file as UTF-8 "
            f"(e.g. `iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`)") from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def csv_records(reader: csv.DictReader, path: Path,
                path_column: str | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of each record; a csv.Error is a DataError naming the line where it began.
    line_num is where a record ends, right even when quoted values span lines.

    A quoted value that spans lines and holds a line that looks like a row of the table (as many fields as
    the header, an image file name in `path_column`, or in any field without one) is a DataError too: a
    '"' left open swallows the rows after it into one value, and csv reports nothing until its 128 KiB limit.
    """
    held: tuple[int, dict[str, str]] | None = None  # a multi-line record, checked once it is known if it ran to EOF
    try:
        for row in reader:
            if held is not None:
                _refuse_swallowed_rows(reader, path, path_column, *held, at_end=False)
                yield held
                held = None
            if any(isinstance(v, str) and "\n" in v for v in row.values()):
                held = reader.line_num, row
            else:
                yield reader.line_num, row
    except csv.Error as exc:
        raise DataError(f"{path}:{reader.line_num + 1}: {exc}; {CSV_ERROR_HINT}") from exc
    if held is not None:
        _refuse_swallowed_rows(reader, path, path_column, *held, at_end=True)
        yield held


def _refuse_swallowed_rows(reader: csv.DictReader, path: Path, path_column: str | None, end_line: int,
                           row: dict[str, str], at_end: bool) -> None:
    """DataError naming the line where a quoted value opened, when its further lines look like table rows."""
    values = [(column, v) for column, v in row.items() if isinstance(v, str)]
    # A quote still open at the end of the file takes the last line's newline into the value.
    eof_newline = at_end and values[-1][1].endswith("\n")
    line = end_line - sum(v.count("\n") for _, v in values) + eof_newline
    for i, (column, value) in enumerate(values):
        rows = _row_like_lines(value, reader, path_column)
        if rows:
            lines = value.count("\n") - (eof_newline and i == len(values) - 1)
            first, text = rows[0]
            look = "looks" if len(rows) == 1 else "look"
            raise DataError(
                f"{path}:{line}: a '\"' opens the {column} value on this line and is not closed on it: the value "
                f"runs over the next {lines} line(s), {len(rows)} of which {look} like rows of this table (line "
                f"{line + first}: {text[:60]!r}), and those rows are lost in it. Close the quote on line {line}, or "
                "write a quote that belongs to the text as \"\" inside a quoted value")
        line += value.count("\n")


def _row_like_lines(value: str, reader: csv.DictReader, path_column: str | None) -> list[tuple[int, str]]:
    """(offset from the value's first line, text) of its further lines that split into a whole table row."""
    from contract.datasets import IMAGE_EXTENSIONS

    columns = list(reader.fieldnames or [])
    at = columns.index(path_column) if path_column in columns else None
    found = []
    for offset, text in enumerate(value.split("\n")[1:], start=1):
        cells = next(csv.reader([text], delimiter=reader.reader.dialect.delimiter), [])
        if len(cells) != len(columns) or len(cells) < 2:
            continue
        files = [cells[at]] if at is not None else cells
        if any(Path(f.strip()).suffix.lower() in IMAGE_EXTENSIONS for f in files):
            found.append((offset, text))
    return found


def read_pairs_table(
    csv_path: str | Path,
    path_column: str = PATH_COLUMN,
    caption_column: str = CAPTION_COLUMN,
    label_column: str = LABEL_COLUMN,
) -> tuple[list[str], list[str], list[int] | None]:
    """Read (paths as written, captions, labels or None) from a CSV/TSV with a header row.

    Raises DataError naming the file (and line) when it is missing, not UTF-8, lacks the columns, holds a
    bad label or a value csv cannot read (an unclosed quote).
    """
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise DataError(f"dataset file not found: {path} (expected a CSV/TSV with columns "
                        f"{path_column},{caption_column}[,{label_column}])")
    text = read_table_text(path)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=_delimiter(path, text.split("\n", 1)[0]))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in (path_column, caption_column) if c not in columns]
    if missing:
        # The header is the file's first line: name what is wanted, never echo what the file holds.
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected a CSV/TSV whose header "
                        f"row names {path_column},{caption_column}[,{label_column}]")
    reader.fieldnames = columns
    has_labels = label_column in columns
    paths, captions, labels = [], [], []
    for line, row in csv_records(reader, path, path_column):
        file = (row.get(path_column) or "").strip()
        if not file:
            continue  # blank line or empty path: nothing to load, nothing to report
        paths.append(file)
        captions.append((row.get(caption_column) or "").strip())
        if has_labels:
            labels.append(_parse_label(row.get(label_column), path, line, label_column))
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
