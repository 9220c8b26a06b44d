"""`cliplab prepare`: turn images and labels or captions into a prepared dataset directory.

    cliplab prepare imagenet ROOT     ROOT/val.csv (image:FILE, category) + ROOT/classname.txt + images
    cliplab prepare folders ROOT      ROOT/<class name>/*.jpg
    cliplab prepare csv FILE          a CSV/TSV of image paths and captions (column names configurable)
    cliplab prepare shards CSV        tar shards from a prepared train.csv or val.csv
    cliplab prepare --demo            the built-in demo dataset

A prepared dataset (docs/architecture.md, "Data contract") is train.csv and val.csv (filepath, caption
and, where classes exist, label; paths relative to the CSV's folder) plus dataset.json. Every image is
checked first; missing and unreadable ones are left out and counted in the summary. Dataset names follow
contract.datasets (the backend's rule too). Exit status: 0 done, 1 the input cannot be prepared, 2 the options
cannot work. Torch-free.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from contract.datasets import IMAGE_EXTENSIONS, NAME_RULE, dataset_name_problem, derive_dataset_name
from dataset.templates import (
    DEFAULT_TEMPLATE,
    DEFAULT_TEMPLATES,
    check_template,
    fill,
    read_templates_file,
    template_list,
)

PREPARED_FILES = ("train.csv", "val.csv", "dataset.json")
SOURCES = ("imagenet", "folders", "csv", "shards")
_MAX_EXAMPLES = 5


class PrepareError(Exception):
    """A source that cannot be prepared; the message names the file, column or row that is wrong."""


class OptionError(PrepareError):
    """Options that cannot work (together, or with this input); the message names the option to change.
    The command exits with status 2, like an argparse usage error."""


@dataclass
class Item:
    """One image-caption pair; `path` is absolute, `label` indexes `classes` (None when unlabelled)."""

    path: Path
    caption: str
    label: int | None = None


@dataclass
class Collected:
    """What a source lists, before the images are checked."""

    items: list[Item]
    classes: list[str] | None
    bad_rows: int = 0
    bad_row_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown as summary warnings
    path_base: str | None = None  # where relative image paths were resolved, for a hint when most are missing

    def bad_row(self, message: str) -> None:
        self.bad_rows += 1
        if len(self.bad_row_examples) < _MAX_EXAMPLES:
            self.bad_row_examples.append(message)


@dataclass
class Summary:
    """Counts of one preparation, printed at the end and stored as dataset.json's `counts`."""

    listed: int
    found: int
    missing: int
    unreadable: int
    bad_rows: int
    classes: int | None
    train: int
    val: int
    examples: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int | None]:
        keys = ("listed", "found", "missing", "unreadable", "bad_rows", "classes", "train", "val")
        return {k: getattr(self, k) for k in keys}

    def format(self, out_dir: Path) -> str:
        lines = [
            f"prepared {out_dir}",
            f"  images listed: {self.listed}  found: {self.found}  missing: {self.missing}  "
            f"unreadable: {self.unreadable}  bad rows: {self.bad_rows}",
            f"  classes: {self.classes if self.classes is not None else '-'}  train: {self.train}  val: {self.val}",
        ]
        lines += [f"  skipped: {e}" for e in self.examples]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- sources


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
    out = Collected(items=[], classes=names, path_base=_path_base(labels_csv, images))
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
            out.items.append(Item(_resolve(images, file), fill(template, names[label]), label))
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
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        out.items += [Item(p.resolve(), fill(template, names[label]), label) for p in files]
        empty += [] if files else [folder]
    accepted = f"accepted extensions: {' '.join(sorted(IMAGE_EXTENSIONS))} (any case)"
    if len(empty) == len(folders):
        raise PrepareError(f"no image files in the class folders of {root}{_other_suffixes(root)}; {accepted}")
    if empty:
        shown = ", ".join(f.name for f in empty[:_MAX_EXAMPLES]) + (", ..." if len(empty) > _MAX_EXAMPLES else "")
        out.notes.append(f"{len(empty)} class folder(s) have no image files, so their classes have no pairs: "
                         f"{shown} ({accepted})")
    return out


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
    out = Collected(items=[], classes=None, path_base=_path_base(path, images))
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
        else:
            out.items.append(Item(_resolve(images, file), caption))
            raw_labels.append(label or "")
    if label_column:
        _assign_labels(out, raw_labels, read_classnames(classnames) if classnames else None, path)
    return out


def _assign_labels(out: Collected, raw: list[str], names: list[str] | None, path: Path) -> None:
    """Integer labels index `names` (rows outside it become bad rows); any other values are class names."""
    ints = [_parse_int(v) for v in raw]
    if not raw or any(i is None for i in ints):
        out.classes = sorted(set(raw))
        index = {name: i for i, name in enumerate(out.classes)}
        for item, value in zip(out.items, raw):
            item.label = index[value]
        return
    out.classes = names
    kept = []
    for item, i in zip(out.items, ints):
        if names is not None and not 0 <= i < len(names):  # type: ignore[operator]
            out.bad_row(f"{path}: {item.path.name}: label {i} is not a class index 0..{len(names) - 1}")
        else:
            item.label = i
            kept.append(item)
    out.items = kept


def _read_table(
    path: Path, required: Iterable[str], hint: str, delimiter: str | None = None
) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV/TSV as (line number, {column: value}); the header must hold the `required` columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PrepareError(f"cannot read {path}: {exc.strerror or exc}") from exc
    first = text.split("\n", 1)[0]
    delimiter = delimiter or ("\t" if path.suffix.lower() == ".tsv" or "\t" in first else ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = reader.fieldnames or []
    absent = [c for c in required if c not in columns]
    if absent:
        raise PrepareError(
            f"{path}: column(s) {', '.join(map(repr, absent))} not found; the header has "
            f"{', '.join(map(repr, columns)) or 'nothing'} (choose columns with {hint})"
        )
    # line_num is where each record ends, right even when quoted values span lines.
    return [(reader.line_num, row) for row in reader]


def _shape_problem(row: dict) -> str | None:
    # csv.DictReader puts surplus fields under the key None and fills absent ones with None.
    if None in row:
        return "more fields than the header (an unquoted separator in a value?)"
    if any(v is None for v in row.values()):
        return "fewer fields than the header"
    return None


def _path_base(table: Path, images: Path | None) -> str:
    if images is not None:
        return f"{images.resolve()} (--images)"
    return f"{table.resolve().parent} (the folder of {table.name}; choose another with --images)"


def _resolve(base: Path, file: str) -> Path:
    p = Path(file).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _parse_int(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ------------------------------------------------------------------------------------------ image check


def check_image(path: Path, decode: bool = False) -> str | None:
    """None when PIL can open (and verify, or fully `decode`) the image; else why not ('missing', ...)."""
    from PIL import Image

    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            im.load() if decode else im.verify()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError)
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def check_images(
    items: list[Item], decode: bool = False, workers: int = 8, progress: bool = True
) -> tuple[list[Item], int, int, list[str]]:
    """Keep the readable items; returns (readable, missing count, unreadable count, examples)."""
    from tqdm import tqdm

    readable, missing, unreadable, examples = [], 0, 0, []
    bar = tqdm(total=len(items), desc="checking images", unit="img", disable=not progress, file=sys.stderr)
    # Threads hide file-system latency (network disks); PIL releases the GIL while decoding. Blocks keep
    # the number of pending futures bounded for million-row CSVs.
    with ThreadPoolExecutor(max(1, workers)) as pool, bar:
        for start in range(0, len(items), 4096):
            block = items[start : start + 4096]
            for item, problem in zip(block, pool.map(lambda it: check_image(it.path, decode), block)):
                bar.update()
                if problem is None:
                    readable.append(item)
                    continue
                missing += problem == "missing"
                unreadable += problem != "missing"
                if len(examples) < _MAX_EXAMPLES:
                    examples.append(f"{item.path}: {problem}")
    return readable, missing, unreadable, examples


# ---------------------------------------------------------------------------------------------- splits


def _group_by_label(items: list[Item]) -> dict[int, list[Item]]:
    groups: dict[int, list[Item]] = {}
    for item in items:
        groups.setdefault(item.label if item.label is not None else -1, []).append(item)
    return dict(sorted(groups.items()))


def interleave_by_class(items: list[Item]) -> list[Item]:
    """Round-robin over classes (in label order), so any window of consecutive rows repeats no class
    until every class has appeared: evaluation batches then mix as many classes as possible."""
    queues = list(_group_by_label(items).values())
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]


def val_share(count: int, val_per_class: int) -> int:
    """Val images of a class of `count`: `val_per_class`, but at most half, so train keeps the larger half."""
    return min(val_per_class, count // 2)


def split_by_class(items: list[Item], val_per_class: int, seed: int) -> tuple[list[Item], list[Item]]:
    """`val_share` random items of each class go to val (class-interleaved); the rest, shuffled, is train."""
    rng = random.Random(seed)
    train, val = [], []
    for members in _group_by_label(items).values():
        members = members[:]
        rng.shuffle(members)
        k = val_share(len(members), val_per_class)
        val += members[:k]
        train += members[k:]
    rng.shuffle(train)
    return train, interleave_by_class(val)


def split_random(items: list[Item], val_size: int, seed: int) -> tuple[list[Item], list[Item]]:
    """Random whole images go to val until it holds at least `val_size` pairs, the rest is train; both
    shuffled with `seed`. All captions of one image stay on one side, so val never shows a train image."""
    by_image: dict[Path, list[Item]] = {}
    for item in items:
        by_image.setdefault(item.path, []).append(item)
    images = list(by_image.values())
    rng = random.Random(seed)
    rng.shuffle(images)
    train, val = [], []
    for pairs in images:
        (val if len(val) < val_size else train).extend(pairs)
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


MIN_VAL_PAIRS = 2  # in-batch metrics compare each val pair with the others


def default_val_size(n: int) -> int:
    """5% of an unlabelled dataset of `n` pairs, at most 1000 and at least 2; none under 4 pairs, where 2
    held out would leave too little to train on."""
    return 0 if n < 2 * MIN_VAL_PAIRS else max(MIN_VAL_PAIRS, min(1000, n // 20))


# ---------------------------------------------------------------------------------------------- output


def refuse_overwrite(out_dir: Path, overwrite: bool) -> None:
    """PrepareError when `out_dir` already holds a prepared dataset and `overwrite` is False."""
    existing = [name for name in PREPARED_FILES if (out_dir / name).exists()]
    if existing and not overwrite:
        raise PrepareError(
            f"{out_dir} already holds a prepared dataset ({', '.join(existing)}); pass --overwrite to replace it "
            "or --out to write elsewhere"
        )


def write_csv(path: Path, items: list[Item], labelled: bool) -> None:
    """Write filepath,caption[,label] rows atomically; paths relative to the CSV's folder."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["filepath", "caption", "label"] if labelled else ["filepath", "caption"])
        for item in items:
            rel = Path(os.path.relpath(item.path, path.parent)).as_posix()
            writer.writerow([rel, item.caption, item.label] if labelled else [rel, item.caption])
    os.replace(tmp, path)


def write_dataset_json(out_dir: Path, info: dict) -> None:
    """dataset.json (name, source, classes, templates, counts, created, ...), written atomically and last:
    its presence marks a complete dataset."""
    data = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info}
    tmp = out_dir / "dataset.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out_dir / "dataset.json")


def write_prepared(
    out_dir: Path, train: list[Item], val: list[Item], info: dict, labelled: bool
) -> None:
    """train.csv, val.csv, then dataset.json (which carries `info`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset.json").unlink(missing_ok=True)  # an overwrite is incomplete until the new one lands
    write_csv(out_dir / "train.csv", train, labelled)
    write_csv(out_dir / "val.csv", val, labelled)
    write_dataset_json(out_dir, info)


def prepare(
    collected: Collected, out_dir: Path, *, name: str, source: str, templates: list[str],
    val_per_class: int = 10, val_size: int | None = None, seed: int = 0, decode: bool = False,
    overwrite: bool = False, progress: bool = True, extra: dict | None = None,
) -> Summary:
    """Check the images of `collected`, split them and write the prepared dataset into `out_dir`."""
    refuse_overwrite(out_dir, overwrite)
    readable, missing, unreadable, examples = check_images(collected.items, decode=decode, progress=progress)
    if not readable:
        raise PrepareError(_nothing_readable(collected, missing, unreadable, examples))
    labelled = any(item.label is not None for item in readable)
    if labelled:
        train, val = split_by_class(readable, val_per_class, seed)
    else:
        train, val = _split_unlabelled(readable, val_size, seed)
    n_classes = len(collected.classes) if collected.classes is not None else (
        len({i.label for i in readable}) if labelled else None)
    summary = Summary(
        listed=len(collected.items) + collected.bad_rows, found=len(readable) + unreadable, missing=missing,
        unreadable=unreadable, bad_rows=collected.bad_rows, classes=n_classes, train=len(train), val=len(val),
        examples=collected.bad_row_examples + examples,
    )
    summary.warnings += collected.notes + _split_warnings(readable, val, labelled, val_per_class, val_size)
    if hint := _missing_hint(collected, missing):
        summary.warnings.append(hint)
    info = {"name": name, "source": source, "classes": collected.classes, "templates": templates,
            "counts": summary.counts(), **(extra or {})}
    write_prepared(out_dir, train, val, info, labelled)
    return summary


def _split_unlabelled(readable: list[Item], val_size: int | None, seed: int) -> tuple[list[Item], list[Item]]:
    size = default_val_size(len(readable)) if val_size is None else val_size
    train, val = split_random(readable, size, seed)
    if not train:
        which = f"--val-size {size}" if val_size is not None else f"the default val split ({size} pairs)"
        images = len({item.path for item in readable})
        raise OptionError(f"{which} leaves nothing to train on: all {len(readable)} readable pairs "
                          f"({images} image(s)) would go to val; pass a smaller --val-size (0 for no val split)")
    return train, val


def _split_warnings(readable: list[Item], val: list[Item], labelled: bool, val_per_class: int,
                    val_size: int | None) -> list[str]:
    warnings = []
    if labelled:
        sizes = Counter(item.label for item in readable).values()
        if capped := sum(val_share(n, val_per_class) < val_per_class for n in sizes):
            warnings.append(f"{capped} class(es) have fewer than {2 * val_per_class} images: val took half of "
                            f"each (rounded down) instead of --val-per-class {val_per_class}, so train keeps the rest")
    if len(val) < MIN_VAL_PAIRS:
        why = (f"no val split under {2 * MIN_VAL_PAIRS} pairs" if not labelled and val_size is None
               else f"raise --val-{'per-class' if labelled else 'size'} for one")
        warnings.append(f"val has {len(val)} pair(s) and evaluation needs at least {MIN_VAL_PAIRS} ({why}): "
                        "train with data.val set to null")
    return warnings


def _missing_hint(collected: Collected, missing: int) -> str | None:
    """Most images missing usually means a wrong base folder: say which folder relative paths went to."""
    if collected.path_base is None or missing == 0 or 2 * missing < len(collected.items):
        return None
    return (f"{missing} of {len(collected.items)} images are missing; relative image paths are resolved "
            f"against {collected.path_base}")


def _nothing_readable(collected: Collected, missing: int, unreadable: int, examples: list[str]) -> str:
    listed = len(collected.items)
    detail = f"{listed} listed, {missing} missing, {unreadable} unreadable, {collected.bad_rows} bad rows"
    problems = collected.bad_row_examples + examples
    first = f"; first problem: {problems[0]}" if problems else ""
    hint = _missing_hint(collected, missing)
    return f"no readable images ({detail}){first}" + (f"\n  hint: {hint}" if hint else "")


# ------------------------------------------------------------------------------------------------- CLI


def dataset_name_arg(value: str) -> str:
    """argparse type of --name: a name the backend serves (contract.datasets's rule), or a usage error."""
    if problem := dataset_name_problem(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} {problem} (try {derive_dataset_name(value)!r}); a name is {NAME_RULE}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", choices=SOURCES, help="kind of input (omit with --demo)")
    parser.add_argument("input", nargs="?", type=Path,
                        help="imagenet: folder with val.csv + classname.txt; folders: the root; csv: the CSV/TSV; "
                             "shards: a prepared train.csv or val.csv")
    parser.add_argument("--demo", action="store_true", help="generate the built-in demo dataset")
    parser.add_argument("--out", type=Path,
                        help="output folder (default <data dir>/datasets/<name>; shards: <CSV's folder>/shards)")
    parser.add_argument("--name", type=dataset_name_arg,
                        help="dataset name (default: from the input's name); shards: the shard file prefix "
                             "(default <dataset>-<CSV name>, e.g. pets-train). Letters and digits of any script, "
                             "'.', '_', '-'")
    parser.add_argument("--data-dir", type=Path,
                        help="cliplab data directory (default $CLIPLAB_DATA_DIR or ~/.cliplab)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing prepared dataset (shards: the shards of that name and their index)")
    g = parser.add_argument_group("captions")
    g.add_argument("--template", default=DEFAULT_TEMPLATE,
                   help="caption template for class sources (default %(default)r)")
    g.add_argument("--templates-file", type=Path,
                   help="zero-shot prompt templates, one per line (default: built-in list)")
    g = parser.add_argument_group("inputs")
    g.add_argument("--images", type=Path,
                   help="folder image paths are relative to (default: the label/CSV file's folder)")
    g.add_argument("--labels", type=Path, help="imagenet: the val.csv (default INPUT/val.csv)")
    g.add_argument("--classnames", type=Path,
                   help="imagenet: classname.txt (default INPUT/classname.txt); csv: names of integer labels")
    g.add_argument("--image-column", default="filepath",
                   help="csv: image path column (default %(default)s; the seed used 'link')")
    g.add_argument("--caption-column", default="caption", help="csv: caption column (default %(default)s)")
    g.add_argument("--label-column", help="csv: optional label column (class index or class name)")
    g.add_argument("--delimiter",
                   help="csv: field separator (default: tab for .tsv or a tab in the header, else comma)")
    g = parser.add_argument_group("split and checks")
    g.add_argument("--val-per-class", type=int, default=10,
                   help="val images per class (default %(default)s); a class keeps at least half its images "
                        "(rounded up) for training, so a class of n gives min(val-per-class, n // 2) to val")
    g.add_argument("--val-size", type=int,
                   help="val pairs for unlabelled data (default 5%%, at least 2 and at most 1000; no val split "
                        "under 4 pairs); all captions of one image go to the same side")
    g.add_argument("--seed", type=int, default=0, help="shuffle seed (default %(default)s)")
    g.add_argument("--decode", action="store_true", help="fully decode each image (finds truncated files; slower)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("shards")
    g.add_argument("--shard-size", type=int, default=1000, help="pairs per tar shard (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 prepared, 1 the input cannot be prepared, 2 the options cannot work."""
    try:
        return _run(args)
    except OptionError as exc:
        print(f"cliplab prepare: error: {exc}", file=sys.stderr)
        return 2
    except (PrepareError, ValueError, OSError) as exc:  # user errors: a message, not a traceback
        print(f"cliplab prepare: error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.demo:
        return _run_demo(args)
    if args.source is None or args.input is None:
        raise OptionError("give a source and an input (e.g. `cliplab prepare folders ./photos`) or --demo")
    if args.source == "shards":
        return _run_shards(args)
    for flag, value in (("--val-per-class", args.val_per_class), ("--val-size", args.val_size)):
        if value is not None and value < 0:
            raise OptionError(f"{flag} must be 0 or more, got {value}")
    check_template(args.template, where="--template")
    templates = template_list(args.template, read_templates_file(args.templates_file) if args.templates_file
                              else DEFAULT_TEMPLATES)
    collected = _COLLECTORS[args.source](args)
    name = args.name or derive_dataset_name(args.input.stem if args.source == "csv" else args.input.resolve().name)
    out_dir = args.out or _data_dir(args) / "datasets" / name
    summary = prepare(
        collected, out_dir, name=name, source=args.source, templates=templates, val_per_class=args.val_per_class,
        val_size=args.val_size, seed=args.seed, decode=args.decode, overwrite=args.overwrite,
        progress=not args.no_progress,
        extra={"caption_template": args.template if args.source != "csv" else None, "input": str(args.input.resolve())},
    )
    print(summary.format(out_dir))
    return 0


_COLLECTORS: dict[str, Callable[[argparse.Namespace], Collected]] = {
    "imagenet": lambda a: collect_imagenet(a.input, a.labels, a.classnames, a.images, a.template),
    "folders": lambda a: collect_folders(a.input, a.template),
    "csv": lambda a: collect_csv(a.input, a.image_column, a.caption_column, a.label_column, a.images, a.classnames,
                                 a.delimiter.encode().decode("unicode_escape") if a.delimiter else None),
}

# What --demo takes: --out, --data-dir, --overwrite, --no-progress. Anything else would be silently ignored.
_DEMO_KEEPS = frozenset({"demo", "out", "data_dir", "overwrite", "no_progress"})


def _run_demo(args: argparse.Namespace) -> int:
    from dataset.demo import ensure_demo_at

    if ignored := _options_demo_ignores(args):
        raise OptionError(f"--demo makes the built-in 'demo' dataset and does not use {', '.join(ignored)}; "
                          "with --demo give only --out, --data-dir and --overwrite")
    out_dir = args.out or _data_dir(args) / "datasets" / "demo"
    path = ensure_demo_at(out_dir, replace=args.overwrite)
    info = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    c = info["counts"]
    print(f"demo dataset at {path}\n  classes: {c['classes']}  train: {c['train']}  val: {c['val']}")
    return 0


def _options_demo_ignores(args: argparse.Namespace) -> list[str]:
    """The given arguments (differing from their defaults) that --demo has no use for, as written on the
    command line: 'a source (folders)', '--name', ..."""
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    given = []
    for dest, value in vars(args).items():
        if dest in _DEMO_KEEPS or value == defaults.get_default(dest):
            continue
        given.append(f"{'a' if dest == 'source' else 'an'} {dest} ({value})" if dest in ("source", "input")
                     else "--" + dest.replace("_", "-"))
    return given


def _run_shards(args: argparse.Namespace) -> int:
    from dataset.shards import INDEX_SUFFIX, existing_shards, write_shards

    csv_path = args.input
    if args.shard_size < 1:
        raise OptionError(f"--shard-size must be at least 1, got {args.shard_size}")
    if not csv_path.is_file():
        raise PrepareError(f"shards: {csv_path} is not a file (give a prepared train.csv or val.csv)")
    source = csv_path.resolve()
    # Dataset and split in the name, so train and val shards can share one folder.
    name = args.name or derive_dataset_name(f"{source.parent.name}-{source.stem}")
    out_dir = args.out or source.parent / "shards"
    if (existing := existing_shards(out_dir, name)) and not args.overwrite:
        raise PrepareError(f"{out_dir} already holds shards named {name} ({existing[0].name}, ...); pass "
                          "--overwrite to replace them, --name to choose another name, or --out another folder")
    shards = write_shards(csv_path, out_dir, shard_size=args.shard_size, name=name, overwrite=args.overwrite,
                          log=None)
    index_path = out_dir / f"{name}{INDEX_SUFFIX}"
    print(_shards_summary(source, shards, index_path, json.loads(index_path.read_text(encoding="utf-8"))))
    return 0


def _shards_summary(source: Path, shards: list[Path], index_path: Path, index: dict) -> str:
    out_dir = index_path.parent
    first, last = shards[0].stem.rsplit("-", 1)[1], shards[-1].stem.rsplit("-", 1)[1]
    pattern = out_dir / f"{index['name']}-{{{first}..{last}}}.tar" if len(shards) > 1 else shards[0]
    field_name = "data.val" if source.stem == "val" else "data.train"
    lines = [f"wrote {len(shards)} shard(s) of {source} to {out_dir}",
             f"  pairs: {index['total']}  left out: {index['left_out']}  index: {index_path.name}"]
    lines += [f"  skipped: {p['path']}: {p['reason']}" for p in index["left_out_examples"][:_MAX_EXAMPLES]]
    # A folder as data.train would read every shard in it, other splits' included: name these ones.
    lines.append(f"  use them with: --set {field_name}='{pattern}'")
    return "\n".join(lines)


def _data_dir(args: argparse.Namespace) -> Path:
    from contract.config import default_data_dir

    return args.data_dir or default_data_dir()
