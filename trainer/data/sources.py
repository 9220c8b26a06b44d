"""Where data.train / data.val point: a prepared dataset's name, a CSV/TSV path or a shard pattern.

Torch-free, so the backend can check a config's data sources before it launches a run.
"""

from __future__ import annotations

from pathlib import Path

from trainer.config import default_data_dir
from trainer.data.table import DataError


def resolve_source(spec: str, split: str, data_dir: str | Path | None = None) -> tuple[str, str]:
    """("csv", path) or ("shards", pattern) for data.train / data.val: a prepared dataset's name ("demo"
    generates the demo dataset), a CSV/TSV path, or a shard pattern."""
    if spec == "demo":
        from dataset.demo import ensure_demo_dataset

        return "csv", str(Path(ensure_demo_dataset(data_dir)) / f"{split}.csv")
    prepared = prepared_split(spec, split, data_dir)
    if prepared is not None:
        return "csv", str(prepared)
    text = str(Path(spec).expanduser()) if spec.startswith("~") else spec
    lowered = text.lower()
    if lowered.endswith(".tar") or "{" in text or any(ch in text for ch in "*?[") or Path(text).is_dir():
        return "shards", text
    if _looks_like_a_name(text) and not Path(text).exists():
        datasets = prepared_datasets(data_dir)
        raise DataError(f"no prepared dataset named {text!r} in {_datasets_dir(data_dir)} (available: "
                        f"{', '.join(['demo', *datasets])}); give a dataset name, a CSV path or a shard pattern")
    return "csv", text


def _datasets_dir(data_dir: str | Path | None) -> Path:
    return Path(data_dir if data_dir is not None else default_data_dir()) / "datasets"


def prepared_split(name: str, split: str, data_dir: str | Path | None = None) -> Path | None:
    """<data_dir>/datasets/<name>/<split>.csv when `name` is a dataset `cliplab prepare` wrote, else None."""
    if not _looks_like_a_name(name):
        return None
    path = _datasets_dir(data_dir) / name / f"{split}.csv"
    return path if path.is_file() else None


def prepared_datasets(data_dir: str | Path | None = None) -> list[str]:
    """Names of the prepared datasets in the data directory (those with a train.csv), sorted."""
    root = _datasets_dir(data_dir)
    return sorted(p.parent.name for p in root.glob("*/train.csv") if p.parent.name != "demo")


def _looks_like_a_name(spec: str) -> bool:
    # A bare word: no folder part and no file suffix, so `pets` is a dataset and `pets.csv` a file.
    return bool(spec) and "/" not in spec and "\\" not in spec and Path(spec).suffix.lower() not in (
        ".csv", ".tsv", ".tar", ".txt")
