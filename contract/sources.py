"""Where data.train / data.val point: a prepared dataset's name, a CSV/TSV path or a shard pattern.

Part of the contract: the backend checks a config's data sources with it before it launches a run, and the
trainer resolves them with it (after generating the demo dataset, which only the trainer does).
"""

from __future__ import annotations

from pathlib import Path

from contract.config import default_data_dir
from contract.table import DataError


def resolve_source(spec: str, split: str, data_dir: str | Path | None = None) -> tuple[str, str]:
    """("csv", path) or ("shards", pattern) for data.train / data.val: a prepared dataset's name (the demo
    dataset once generated), a CSV/TSV path, or a shard pattern."""
    prepared = prepared_split(spec, split, data_dir)
    if prepared is not None:
        return "csv", str(prepared)
    text = str(Path(spec).expanduser()) if spec.startswith("~") else spec
    if _is_shard_pattern(text):
        return "shards", text
    if _looks_like_a_name(text) and not Path(text).exists():
        raise DataError(_missing_dataset(text, split, data_dir))
    return "csv", text


def _missing_dataset(name: str, split: str, data_dir: str | Path | None) -> str:
    """Why the bare name `name` gives no `split` CSV: a prepared dataset without that split, or none at all."""
    root = _datasets_dir(data_dir)
    if (root / name / "train.csv").is_file():
        return f"dataset {name!r} has no {split} split ({split}.csv); set data.{split} to null or another source"
    return (f"no prepared dataset named {name!r} (available: {', '.join(['demo', *prepared_datasets(data_dir)])}) "
            f"in {root}; give a dataset name, a CSV path or a shard pattern")


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


def _is_shard_pattern(text: str) -> bool:
    return text.lower().endswith(".tar") or "{" in text or any(ch in text for ch in "*?[") or Path(text).is_dir()


def _looks_like_a_name(spec: str) -> bool:
    # A bare word: no folder part and no file suffix, so `pets` is a dataset and `pets.csv` a file.
    return bool(spec) and "/" not in spec and "\\" not in spec and Path(spec).suffix.lower() not in (
        ".csv", ".tsv", ".tar", ".txt")


def source_problem(spec: str, split: str, data_dir: str | Path | None = None) -> str | None:
    """Why `spec` cannot serve as the `split` data of a run launched with `data_dir` (its cwd being the run
    directory), or None. Checked before launch by the backend; shard patterns are left to the trainer."""
    if spec == "demo" or prepared_split(spec, split, data_dir) is not None:
        return None
    if _looks_like_a_name(spec):
        return _missing_dataset(spec, split, data_dir)
    path = Path(spec).expanduser()
    if not path.is_absolute():
        return f"{spec!r} is a relative path, which a launched run would resolve in its own run directory; " \
               "give an absolute path or a dataset name"
    if _is_shard_pattern(str(path)):
        return None
    if not path.is_file():
        return f"file not found: {path}"
    return None
