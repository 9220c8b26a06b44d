"""Datasets, samplers and loaders for image-caption pairs (see docs/architecture.md, "Data contract").

    from trainer.data import build_train_loader, build_val_dataset, build_val_loader
    loader = build_train_loader(cfg.data, batch_size, resolution, rank, world_size, seed)
    batch = next(loader)   # {"image" [B,3,H,W] float, "text" [B,ctx], "caption_id", "image_id", "label",
                           #  "index", "skipped"}

Modules: samples (sample/skip/collate), csv_dataset, shard_dataset, samplers, loader (StepLoader,
EvalLoader), cache (ImageCache), gpu_decode, build, sources (the demo dataset, then contract.sources).
The pairs table and data-source rules are the contract's (contract.table, contract.sources); their names are
re-exported here for the data code's users. Names load lazily: torch loads only when a loader is asked for.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "build": ["build_train_loader", "build_val_dataset", "build_val_loader"],
    "cache": ["CachedDataset", "ImageCache", "train_cache_size"],
    "csv_dataset": ["CsvDataset"],
    "gpu_decode": ["decode_batch_on_device", "gpu_decode_available"],
    "loader": ["BatchFinisher", "EvalLoader", "StepLoader"],
    "samplers": ["DistinctCaptionBatchSampler", "ShuffledBatchSampler"],
    "samples": ["Skipped", "caption_hash", "collate_samples", "detach_from_stop_signals", "sample_seed"],
    "shard_dataset": ["ShardDataset", "expand_braces", "iter_records", "resolve_shards"],
    "sources": ["resolve_source"],
    "contract.sources": ["prepared_datasets", "prepared_split"],
    "contract.table": ["DataError", "read_dataset_info", "read_pairs_table"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")
    value = getattr(import_module(module if module.startswith("contract.") else f"trainer.data.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
