"""`cliplab prepare`: turn images and labels or captions into a prepared dataset directory.

    cliplab prepare imagenet ROOT     ROOT/val.csv (image:FILE, category) + ROOT/classname.txt + images
    cliplab prepare folders ROOT      ROOT/<class name>/*.jpg
    cliplab prepare csv FILE          a CSV/TSV of image paths and captions (column names configurable)
    cliplab prepare json FILE         COCO captions, a JSON array of records or JSON Lines (told apart by content)
    cliplab prepare shards CSV        tar shards from a prepared train.csv or val.csv
    cliplab prepare --demo            the built-in demo dataset

The work is dataset/'s (collect, checks, split, writer, prepare; shards; demo); this module reads the
options and prints the summary. Dataset names follow contract.datasets (the backend's rule too). Exit
status: 0 done, 1 the input cannot be prepared, 2 the options cannot work. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS, NAME_RULE, dataset_name_problem, derive_dataset_name
from dataset.checks import PREPARE_LIMIT
from dataset.collect import Collected, collect_csv, collect_folders, collect_imagenet
from dataset.collect_json import collect_json
from dataset.images import own_pixel_check
from dataset.prepare import prepare
from dataset.problems import MAX_EXAMPLES, OptionError, PrepareError
from dataset.templates import DEFAULT_TEMPLATE, DEFAULT_TEMPLATES, check_template, read_templates_file, template_list

SOURCES = ("imagenet", "folders", "csv", "json", "shards")
CAPTION_FILES = ("csv", "json")  # sources named after their file, with captions of their own


def dataset_name_arg(value: str) -> str:
    """argparse type of --name: a name the backend serves (contract.datasets's rule), or a usage error."""
    if problem := dataset_name_problem(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} {problem} (try {derive_dataset_name(value)!r}); a name is {NAME_RULE}")
    return value


def pixel_limit_arg(value: str) -> int | None:
    """argparse type of --max-image-pixels: a positive integer (underscores allowed), or 'none'."""
    if value.strip().lower() == "none":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of pixels (e.g. 400000000) or 'none'")
    return number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", choices=SOURCES, help="kind of input (omit with --demo)")
    parser.add_argument("input", nargs="?", type=Path,
                        help="imagenet: folder with val.csv + classname.txt; folders: the root; csv: the CSV/TSV; "
                             "json: COCO captions ({\"images\": [...], \"annotations\": [...]}), a JSON array of "
                             "{\"image\": ..., \"caption\": ...} records, or JSON Lines of them (one per line); "
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
                   help="folder image paths are relative to (default: the label/CSV/JSON file's folder; for COCO give "
                        "its images' folder, e.g. train2017/)")
    g.add_argument("--labels", type=Path, help="imagenet: the val.csv (default INPUT/val.csv)")
    g.add_argument("--classnames", type=Path,
                   help="imagenet: classname.txt (default INPUT/classname.txt); csv, json: names of integer labels")
    g.add_argument("--image-column",
                   help="csv: image path column (default filepath; the seed used 'link'); json: the records' "
                        "image path key (default image)")
    g.add_argument("--caption-column",
                   help="csv: caption column; json: the records' caption key, a string or a list of strings "
                        "(default caption)")
    g.add_argument("--label-column",
                   help="csv, json: optional label column or key (class index or class name)")
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
    g.add_argument("--decode", action="store_true",
                   help="fully decode each image (finds truncated files; slower); shards: such images are left out")
    g.add_argument("--max-image-pixels", type=pixel_limit_arg, default=DEFAULT_MAX_IMAGE_PIXELS, metavar="N",
                   help="images with more pixels (width x height) are left out as unreadable (default %(default)s, "
                        "Pillow's decompression-bomb limit; 'none': no limit); shards: read from each image's "
                        "header. Training has its own limit: data.max_image_pixels")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("shards")
    g.add_argument("--shard-size", type=int, default=1000, help="pairs per tar shard (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    """Exit status 0 prepared, 1 the input cannot be prepared, 2 the options cannot work."""
    own_pixel_check()  # images are checked by name in dataset.images, not by Pillow's anonymous warning
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
    if "--shard-size" in _options_ignored(args, frozenset(vars(args)) - {"shard_size"}):
        raise OptionError(f"--shard-size is for `prepare shards`; `prepare {args.source}` writes no shards")
    for flag, value in (("--val-per-class", args.val_per_class), ("--val-size", args.val_size)):
        if value is not None and value < 0:
            raise OptionError(f"{flag} must be 0 or more, got {value}")
    check_template(args.template, where="--template")
    templates = template_list(args.template, read_templates_file(args.templates_file) if args.templates_file
                              else DEFAULT_TEMPLATES)
    if args.source == "json" and args.delimiter:
        raise OptionError("--delimiter is for csv; a JSON file needs none")
    collected = _COLLECTORS[args.source](args)
    name = args.name or derive_dataset_name(
        args.input.stem if args.source in CAPTION_FILES else args.input.resolve().name)
    out_dir = args.out or _data_dir(args) / "datasets" / name
    summary = prepare(
        collected, out_dir, name=name, source=args.source, templates=templates, val_per_class=args.val_per_class,
        val_size=args.val_size, seed=args.seed, decode=args.decode, overwrite=args.overwrite,
        progress=not args.no_progress, max_pixels=args.max_image_pixels,
        extra={"caption_template": None if args.source in CAPTION_FILES else args.template,
               "input": str(args.input.resolve())},
    )
    print(summary.format(out_dir))
    return 0


_COLLECTORS: dict[str, Callable[[argparse.Namespace], Collected]] = {
    "imagenet": lambda a: collect_imagenet(a.input, a.labels, a.classnames, a.images, a.template),
    "folders": lambda a: collect_folders(a.input, a.template),
    "csv": lambda a: collect_csv(a.input, a.image_column or "filepath", a.caption_column or "caption", a.label_column,
                                 a.images, a.classnames,
                                 a.delimiter.encode().decode("unicode_escape") if a.delimiter else None),
    "json": lambda a: collect_json(a.input, a.image_column, a.caption_column, a.label_column, a.images, a.classnames),
}

# What --demo and `prepare shards` take; anything else given would be silently ignored, so it is refused.
_DEMO_KEEPS = frozenset({"demo", "out", "data_dir", "overwrite", "no_progress"})
_SHARDS_KEEPS = frozenset({"source", "input", "out", "name", "overwrite", "no_progress", "decode", "max_image_pixels",
                           "shard_size"})


def _run_demo(args: argparse.Namespace) -> int:
    from dataset.demo import ensure_demo_at

    if ignored := _options_ignored(args, _DEMO_KEEPS):
        raise OptionError(f"--demo makes the built-in 'demo' dataset and does not use {', '.join(ignored)}; "
                          "with --demo give only --out, --data-dir and --overwrite")
    out_dir = args.out or _data_dir(args) / "datasets" / "demo"
    path = ensure_demo_at(out_dir, replace=args.overwrite)
    info = json.loads((path / "dataset.json").read_text(encoding="utf-8"))
    c = info["counts"]
    print(f"demo dataset at {path}\n  classes: {c['classes']}  train: {c['train']}  val: {c['val']}")
    return 0


def _options_ignored(args: argparse.Namespace, keeps: frozenset[str]) -> list[str]:
    """The given arguments (differing from their defaults) outside `keeps`, as written on the command line:
    'a source (folders)', '--name', ..."""
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    given = []
    for dest, value in vars(args).items():
        if dest in keeps or value == defaults.get_default(dest):
            continue
        given.append(f"{'a' if dest == 'source' else 'an'} {dest} ({value})" if dest in ("source", "input")
                     else "--" + dest.replace("_", "-"))
    return given


def _run_shards(args: argparse.Namespace) -> int:
    from dataset.shards import INDEX_SUFFIX, existing_shards, write_shards

    csv_path = args.input
    if ignored := _options_ignored(args, _SHARDS_KEEPS):
        raise OptionError(f"prepare shards packs a prepared train.csv or val.csv and does not use {', '.join(ignored)}; "
                          "it takes --out, --name, --shard-size, --decode, --max-image-pixels and --overwrite")
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
    # The pixel limit is checked on each image's header; --decode also leaves out what does not decode.
    shards = write_shards(csv_path, out_dir, shard_size=args.shard_size, name=name, overwrite=args.overwrite,
                          log=None, verify=args.decode, max_pixels=args.max_image_pixels, limit_setting=PREPARE_LIMIT)
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
    lines += [f"  skipped: {p['path']}: {p['reason']}" for p in index["left_out_examples"][:MAX_EXAMPLES]]
    # A folder as data.train would read every shard in it, other splits' included: name these ones.
    lines.append(f"  use them with: --set {field_name}='{pattern}'")
    return "\n".join(lines)


def _data_dir(args: argparse.Namespace) -> Path:
    from contract.config import default_data_dir

    return args.data_dir or default_data_dir()
