"""Writing a prepared dataset (docs/architecture.md, "Data contract"): train.csv, val.csv, then dataset.json,
each atomically. `cliplab prepare` and the demo generator both write through here."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from dataset.items import Item
from dataset.problems import PrepareError

PREPARED_FILES = ("train.csv", "val.csv", "dataset.json")


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
