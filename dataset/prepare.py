"""Preparing a dataset: check the collected images, split them into train and val, write the result.

A prepared dataset (docs/architecture.md, "Data contract") is train.csv and val.csv (filepath, caption
and, where classes exist, label; paths relative to the CSV's folder) plus dataset.json. Every image is
checked first; missing and unreadable ones are left out and counted in the summary. Torch-free; the
`cliplab prepare` command (trainer/commands/prepare.py) is its front end.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from contract.datasets import DEFAULT_MAX_IMAGE_PIXELS
from dataset.checks import check_images
from dataset.collect import Collected
from dataset.items import Item
from dataset.problems import OptionError, PrepareError
from dataset.split import MIN_VAL_PAIRS, default_val_size, image_labels, split_by_class, split_random, val_share
from dataset.writer import refuse_overwrite, write_prepared


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
    read_as: str | None = None  # the format a JSON source was detected as

    def counts(self) -> dict[str, int | None]:
        keys = ("listed", "found", "missing", "unreadable", "bad_rows", "classes", "train", "val")
        return {k: getattr(self, k) for k in keys}

    def format(self, out_dir: Path) -> str:
        lines = [
            f"prepared {out_dir}" + (f" (read as {self.read_as})" if self.read_as else ""),
            f"  images listed: {self.listed}  found: {self.found}  missing: {self.missing}  "
            f"unreadable: {self.unreadable}  bad rows: {self.bad_rows}",
            f"  classes: {self.classes if self.classes is not None else '-'}  train: {self.train}  val: {self.val}",
        ]
        lines += [f"  skipped: {e}" for e in self.examples]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def prepare(
    collected: Collected, out_dir: Path, *, name: str, source: str, templates: list[str],
    val_per_class: int = 10, val_size: int | None = None, seed: int = 0, decode: bool = False,
    overwrite: bool = False, progress: bool = True, extra: dict | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> Summary:
    """Check the images of `collected` (over `max_pixels` is unreadable), split them and write the prepared
    dataset into `out_dir`."""
    refuse_overwrite(out_dir, overwrite)
    check = check_images(collected.items, decode=decode, progress=progress, max_pixels=max_pixels)
    readable, missing, unreadable, examples = check.readable, check.missing, check.unreadable, check.examples
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
        examples=collected.bad_row_examples + examples, read_as=collected.layout,
    )
    summary.warnings += collected.notes + _split_warnings(readable, val, labelled, val_per_class, val_size)
    if hint := _missing_hint(collected, missing):
        summary.warnings.append(hint)
    if note := check.large_note():
        summary.warnings.append(note)
    info = {"name": name, "source": source, "classes": collected.classes, "templates": templates,
            "counts": summary.counts(), **({"format": collected.layout} if collected.layout else {}), **(extra or {})}
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
        sizes = Counter(label for label in image_labels(readable).values()).values()
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
