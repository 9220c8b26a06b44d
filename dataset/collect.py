"""Sources of a prepared dataset: the pairs an ImageNet-val folder, class folders or a CSV/TSV list, before
their images are checked (JSON captions: collect_json.py, over the helpers here). A row that cannot be read is
counted and named, not fatal; a source that cannot be read at all raises PrepareError naming the file or column."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from contract.datasets import IMAGE_EXTENSIONS
from contract.table import csv_records, read_table_text
from dataset.items import Item
from dataset.problems import MAX_EXAMPLES, PrepareError
from dataset.templates import DEFAULT_TEMPLATE, fill

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")  # http://, https://, s3://, gs:// ...


@dataclass
class Collected:
    """What a source lists, before the images are checked."""

    items: list[Item]
    classes: list[str] | None
    bad_rows: int = 0
    bad_row_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown as summary warnings
    path_base: str | None = None  # where relative image paths were resolved, for a hint when most are missing
    layout: str | None = None  # what a source that can hold several formats was read as (json: "COCO captions", ...)

    def bad_row(self, message: str) -> None:
        self.bad_rows += 1
        if len(self.bad_row_examples) < MAX_EXAMPLES:
            self.bad_row_examples.append(message)


def read_classnames(path: Path) -> list[str]:
    """One class per line; the first comma-separated name is the class name (`tench, Tinca tinca` -> tench)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise PrepareError(f"cannot read class names {path}: {exc.strerror or exc}") from exc
    names = [line.split(",")[0].strip() for line in lines if line.strip()]
    if not names:
        raise PrepareError(f"class names file {path} is empty (expected one class per line)")
    return names


def collect_imagenet(
    root: Path, labels_csv: Path | None = None, classnames: Path | None = None, images: Path | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> Collected:
    """The seed's ImageNet-val layout: val.csv (`image:FILE`, `category` = class index) + classname.txt."""
    labels_csv = labels_csv or root / "val.csv"
    names = read_classnames(classnames or root / "classname.txt")
    rows = _read_table(labels_csv, required=("image:FILE", "category"), hint="--labels")
    out = Collected(items=[], classes=names, path_base=path_base(labels_csv, images))
    images = images or labels_csv.parent
    for line, row in rows:
        file, category = (row.get("image:FILE") or "").strip(), (row.get("category") or "").strip()
        label = _parse_int(category)
        if problem := _shape_problem(row):
            out.bad_row(f"{labels_csv}:{line}: {problem}")
        elif not file:
            out.bad_row(f"{labels_csv}:{line}: empty image:FILE")
        elif label is None or not 0 <= label < len(names):
            out.bad_row(f"{labels_csv}:{line}: category {category!r} is not a class index 0..{len(names) - 1}")
        else:
            out.items.append(Item(resolve_image(images, file), fill(template, names[label]), label))
    return out


def collect_folders(root: Path, template: str = DEFAULT_TEMPLATE) -> Collected:
    """root/<class name>/**/*.jpg|png|...; classes sorted by folder name, '_' in names read as spaces."""
    if not root.is_dir():
        raise PrepareError(f"class-folder root {root} is not a directory")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise PrepareError(f"{root} has no class folders (expected {root}/<class name>/<image files>)")
    names = [f.name.replace("_", " ").strip() for f in folders]
    out = Collected(items=[], classes=names)
    empty = []
    for label, folder in enumerate(folders):
        files = sorted(p for p in folder.rglob("*") if _is_listed_image(p, folder))
        out.items += [Item(p.resolve(), fill(template, names[label]), label) for p in files]
        empty += [] if files else [folder]
    accepted = f"accepted extensions: {' '.join(sorted(IMAGE_EXTENSIONS))} (any case)"
    if len(empty) == len(folders):
        raise PrepareError(f"no image files in the class folders of {root}{_other_suffixes(root)}; {accepted}")
    if empty:
        shown = ", ".join(f.name for f in empty[:MAX_EXAMPLES]) + (", ..." if len(empty) > MAX_EXAMPLES else "")
        out.notes.append(f"{len(empty)} class folder(s) have no image files, so their classes have no pairs: "
                         f"{shown} ({accepted})")
    return out


def _is_listed_image(path: Path, folder: Path) -> bool:
    """An image file of a class folder, not hidden: macOS puts `._<name>.jpg` resource forks (not images) beside
    every copied photo, and `.thumbnails/` and similar tool folders are no class member either."""
    hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
    return not hidden and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def _other_suffixes(root: Path) -> str:
    """' (found: .heic, .txt)' naming the file types that are there, to show why none was taken."""
    found = sorted({p.suffix.lower() or p.name for p in root.rglob("*") if p.is_file()})
    if not found:
        return " (they hold no files)"
    return f" (found: {', '.join(found[:8])}{', ...' if len(found) > 8 else ''})"


def collect_csv(
    path: Path, image_column: str = "filepath", caption_column: str = "caption", label_column: str | None = None,
    images: Path | None = None, classnames: Path | None = None, delimiter: str | None = None,
) -> Collected:
    """A CSV/TSV of image paths (relative to `images`, default the CSV's folder) and captions.

    Labels are optional: integers index `classnames` (or stay unnamed), any other values become classes
    sorted by name.
    """
    required = (image_column, caption_column) + ((label_column,) if label_column else ())
    rows = _read_table(path, required=required, hint="--image-column/--caption-column/--label-column",
                          delimiter=delimiter)
    out = Collected(items=[], classes=None, path_base=path_base(path, images))
    images = images or path.parent
    raw_labels: list[str] = []
    for line, row in rows:
        file, caption = (row.get(image_column) or "").strip(), (row.get(caption_column) or "").strip()
        label = (row.get(label_column) or "").strip() if label_column else None
        if problem := _shape_problem(row):
            out.bad_row(f"{path}:{line}: {problem}")
        elif not file or not caption or label == "":
            missing = image_column if not file else caption_column if not caption else label_column
            out.bad_row(f"{path}:{line}: empty {missing}")
        elif problem := url_problem(image_column, file):
            out.bad_row(f"{path}:{line}: {problem}")
        else:
            out.items.append(Item(resolve_image(images, file), caption))
            raw_labels.append(label or "")
    if label_column:
        assign_labels(out, raw_labels, read_classnames(classnames) if classnames else None, path)
    return out


def assign_labels(out: Collected, raw: list[str], names: list[str] | None, path: Path) -> None:
    """Label `out.items` from their `raw` values. Integer labels index `names` (rows outside it become bad rows);
    any other values are class names, unless `names` is given: then they are bad rows too (--classnames must not
    be dropped without a word)."""
    ints = [_parse_int(v) for v in raw]
    if names is None and (not raw or any(i is None for i in ints)):
        out.classes = sorted(set(raw))
        index = {name: i for i, name in enumerate(out.classes)}
        for item, value in zip(out.items, raw):
            item.label = index[value]
        return
    out.classes = names
    kept = []
    for item, value, i in zip(out.items, raw, ints):
        if names is not None and (i is None or not 0 <= i < len(names)):
            out.bad_row(f"{path}: {item.path.name}: label {value} is not a class index 0..{len(names) - 1}")
        else:
            item.label = i
            kept.append(item)
    out.items = kept


def _read_table(
    path: Path, required: Iterable[str], hint: str, delimiter: str | None = None
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV/TSV as (line number, {column: value}); the header must hold the `required` columns (the
    first names the images)."""
    required = list(required)
    text = read_table_text(path)  # a DataError names a line that is not UTF-8
    first = text.split("\n", 1)[0]
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" or "\t" in first else ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    # Stripped like the trainer's reader (contract.table), so ` caption` means the same column in both.
    columns = [c.strip() for c in reader.fieldnames or []]
    reader.fieldnames = columns
    _check_header(path, columns, required, hint, first)
    # A DataError names the line csv could not read, or where a quote left open swallowed further rows.
    rows = list(csv_records(reader, path, path_column=required[0]))
    if not rows:
        raise PrepareError(f"{path} has a header and no data rows (expected one image,caption pair per line)")
    return rows


def _check_header(path: Path, columns: list[str], required: list[str], hint: str, first_line: str) -> None:
    """PrepareError naming required columns the header lacks or holds twice (csv keeps only the last)."""
    twice = [c for c in dict.fromkeys(required) if columns.count(c) > 1]
    if twice:
        raise PrepareError(f"{path}: the header names column(s) {', '.join(map(repr, twice))} more than once; "
                           "rename all but one, so it is clear which one to read")
    absent = [c for c in required if c not in columns]
    if absent:
        raise PrepareError(
            f"{path}: column(s) {', '.join(map(repr, absent))} not found; the header has "
            f"{', '.join(map(repr, columns)) or 'nothing'} (choose columns with {hint})"
            + header_hint(absent, columns, first_line))


def header_hint(absent: list[str], columns: list[str], first_line: str = "") -> str:
    """Why a wanted column (or JSON key) may look absent: other letter case, or another field separator."""
    by_case = {c.lower(): c for c in columns}
    if near := [f"{by_case[a.lower()]!r} for {a!r}" for a in absent if a.lower() in by_case]:
        return f"; column names are case-sensitive: did you mean {', '.join(near)}?"
    if len(columns) == 1 and (seps := [s for s in ";|" if s in first_line]):
        return f"; the header looks {seps[0]!r}-separated: pass --delimiter '{seps[0]}'"
    return ""


def _shape_problem(row: dict) -> str | None:
    # csv.DictReader puts surplus fields under the key None and fills absent ones with None.
    if None in row:
        return "more fields than the header (an unquoted separator in a value?)"
    if any(v is None for v in row.values()):
        return "fewer fields than the header"
    return None


def url_problem(field_name: str, file: str) -> str | None:
    """Why an image path that is a URL cannot be listed (prepare reads local files), or None."""
    if not _URL.match(file):
        return None
    return (f"{field_name} is a URL ({file[:80]}); prepare reads local files only: download the images first "
            "(e.g. with img2dataset) and list their paths")


def path_base(table: Path, images: Path | None) -> str:
    """Where relative image paths of `table` resolve (for the hint when most images are missing)."""
    if images is not None:
        return f"{images.resolve()} (--images)"
    return f"{table.resolve().parent} (the folder of {table.name}; choose another with --images)"


def resolve_image(base: Path, file: str) -> Path:
    """The absolute path of an image path as a source writes it, relative to `base` unless absolute."""
    p = Path(file).expanduser()
    p = p if p.is_absolute() else base / p
    try:
        return p.resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13): the image check names it
        return p.absolute()


def _parse_int(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
