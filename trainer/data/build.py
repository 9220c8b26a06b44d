"""From a DataConfig to loaders: the only place that chooses between CSV and shards, cache and GPU decode."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from contract.config import DataConfig, default_data_dir
from contract.table import DataError
from trainer.data.cache import CachedDataset, ImageCache, train_cache_size
from trainer.data.csv_dataset import CsvDataset
from trainer.data.gpu_decode import gpu_decode_available
from trainer.data.loader import BatchFinisher, EvalLoader, StepLoader
from trainer.data.samplers import DistinctCaptionBatchSampler, ShuffledBatchSampler
from trainer.data.samples import Tokenizer, collate_samples, detach_from_stop_signals
from trainer.data.shard_dataset import ShardDataset
from trainer.data.sources import resolve_source
from trainer.transforms import CROP_RATIO, eval_transform, train_transform, train_transform_uint8

Log = Callable[[str], None]


def _print_log(message: str) -> None:
    print(f"[data] {message}", flush=True)


def _gpu_decode_device(data_cfg: DataConfig, device: torch.device | None, notes: list[str]) -> torch.device | None:
    """The device to decode JPEGs on, or None (CPU decode) with the reason recorded in `notes`."""
    if not data_cfg.gpu_decode:
        return None
    if data_cfg.cache:
        notes.append("data.gpu_decode is ignored because data.cache already stores decoded images")
        return None
    available, why = gpu_decode_available()
    if not available:
        notes.append(f"data.gpu_decode: GPU JPEG decoding is unavailable ({why}); decoding on the CPU instead")
        return None
    if device is not None and torch.device(device).type != "cuda":
        notes.append(f"data.gpu_decode: the training device is {device}, not CUDA; decoding on the CPU instead")
        return None
    return torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())


def train_draft_side(resolution: int, scale: tuple[float, float]) -> int:
    """The image short side the random resized crop needs for `resolution`: its smallest crop (scale[0] of the
    area at the narrowest ratio) spans at least sqrt(ratio * scale[0]) of the short side."""
    return math.ceil(resolution / math.sqrt(min(CROP_RATIO) * scale[0]))


def _loader_kwargs(num_workers: int, device: torch.device | None) -> dict[str, Any]:
    return {"num_workers": num_workers, "collate_fn": collate_samples,
            "worker_init_fn": detach_from_stop_signals,
            "pin_memory": device is not None and device.type == "cuda"}


@dataclass
class _TrainSpec:
    """What the CSV and shard training-loader builders need, in one place."""

    cfg: DataConfig
    path: str
    resolution: int
    to_tensor: Callable[[Any], torch.Tensor]
    batch_size: int
    rank: int
    world_size: int
    seed: int
    tokenizer: Tokenizer | None
    encoded: bool
    pin_for: torch.device | None
    data_dir: str | Path | None
    log: Log


def build_train_loader(
    data_cfg: DataConfig,
    batch_size: int,
    resolution: int,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
    *,
    device: torch.device | str | None = None,
    data_dir: str | Path | None = None,
    log: Log = _print_log,
) -> StepLoader:
    """The endless, resumable training loader for data.train (CSV/TSV, shards or "demo").

    Per-rank batches of `batch_size`, drop_last, shuffled from `seed`. Without `device`, workers hand out
    normalised float images. With `device`, they hand out uint8 and the loader normalises on the device:
    4x less data through shared memory and over the bus, and no float work in the training process.
    `log` receives notes about the data path (cache builds, GPU decoding unavailable); they are also kept
    in `loader.notes`.
    """
    device = torch.device(device) if device is not None else None
    notes: list[str] = []
    decode_device = _gpu_decode_device(data_cfg, device, notes)
    scale = tuple(data_cfg.train_crop_scale)
    finish_on = decode_device or device
    # Normalising 64 images of 224 px costs ~50 ms on one CPU core: do it in the workers unless a device
    # can do it for free.
    to_tensor = (train_transform_uint8 if finish_on is not None else train_transform)(resolution, scale)
    kind, path = resolve_source(data_cfg.train, "train", data_dir)
    spec = _TrainSpec(data_cfg, path, resolution, to_tensor, batch_size, rank, world_size, seed, tokenizer,
                      encoded=decode_device is not None, pin_for=finish_on, data_dir=data_dir, log=log)
    loader, source = (_shard_train_loader if kind == "shards" else _csv_train_loader)(spec, notes)
    for note in notes:
        log(note)
    return StepLoader(loader, source, BatchFinisher(finish_on, resolution, scale), notes, log=log)


def _csv_train_loader(spec: _TrainSpec, notes: list[str]) -> tuple[torch.utils.data.DataLoader, Any]:
    cfg = spec.cfg
    base = CsvDataset(spec.path, spec.to_tensor, spec.tokenizer, cfg.context_length, encoded=spec.encoded,
                      **_image_options(cfg, train_draft_side(spec.resolution, cfg.train_crop_scale)))
    dataset: Any = base
    if cfg.cache:
        cache = _ensure_cache(base, train_cache_size(spec.resolution), cfg, spec.data_dir, spec.log)
        dataset = CachedDataset(base, cache, spec.to_tensor)
    ranks = dict(rank=spec.rank, world_size=spec.world_size, seed=spec.seed)
    if cfg.distinct_captions:
        sampler: Any = DistinctCaptionBatchSampler(base.caption_ids, spec.batch_size, **ranks)
    else:
        sampler = ShuffledBatchSampler(len(base), spec.batch_size, **ranks)
    if sampler.batches_per_epoch(0) == 0:
        raise DataError(f"{spec.path} has {len(base)} items, fewer than one global batch of "
                        f"{spec.batch_size * spec.world_size}; lower train.batch_size")
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, persistent_workers=cfg.num_workers > 0,
                                         **_loader_kwargs(cfg.num_workers, spec.pin_for))
    return loader, sampler


def _shard_train_loader(spec: _TrainSpec, notes: list[str]) -> tuple[torch.utils.data.DataLoader, Any]:
    cfg = spec.cfg
    if cfg.cache:
        notes.append("data.cache applies to CSV datasets; shards are streamed without it")
    if cfg.distinct_captions:
        notes.append("data.distinct_captions needs the whole caption list and is not available for shards; "
                     "duplicate captions in a batch are handled by loss.multi_positive")
    dataset = ShardDataset(spec.path, spec.to_tensor, spec.tokenizer, cfg.context_length,
                           batch_size=spec.batch_size, rank=spec.rank, world_size=spec.world_size, seed=spec.seed,
                           encoded=spec.encoded,
                           **_image_options(cfg, train_draft_side(spec.resolution, cfg.train_crop_scale)))
    # Workers are not persistent: each epoch's workers must see the dataset's new position.
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec.batch_size, drop_last=True,
                                         **_loader_kwargs(cfg.num_workers, spec.pin_for))
    return loader, dataset


def _image_options(data_cfg: DataConfig, draft_side: int) -> dict[str, Any]:
    """The datasets' image-reading options: data.max_image_pixels, and the side large JPEGs may decode down to."""
    return {"max_pixels": data_cfg.max_image_pixels, "draft_side": draft_side}


def _ensure_cache(base: CsvDataset, size: int, data_cfg: DataConfig, data_dir: str | Path | None,
                  log: Log) -> ImageCache:
    cache = ImageCache(base, size, Path(data_dir or default_data_dir()) / "cache", num_workers=data_cfg.num_workers)
    cache.ensure(log)
    return cache


def build_val_dataset(
    data_cfg: DataConfig,
    resolution: int,
    tokenizer: Tokenizer | None = None,
    *,
    data_dir: str | Path | None = None,
    log: Log = _print_log,
) -> CsvDataset | CachedDataset | ShardDataset:
    """The evaluation dataset for data.val, with the eval transform (float images, ready for the model).

    With data.cache a CSV dataset reads images cached at exactly `resolution` (the eval transform's resize
    and crop are then no-ops): the same float pixels as the direct path, without decoding JPEGs again.
    """
    if data_cfg.val is None:
        raise DataError("data.val is null: there is no validation set to build")
    kind, path = resolve_source(data_cfg.val, "val", data_dir)
    common = dict(tokenizer=tokenizer, context_length=data_cfg.context_length,
                  **_image_options(data_cfg, resolution))
    if kind == "shards":
        return ShardDataset(path, eval_transform(resolution), **common, shuffle=False)
    if data_cfg.cache:
        base = CsvDataset(path, eval_transform(resolution), **common)
        return CachedDataset(base, _ensure_cache(base, resolution, data_cfg, data_dir, log), eval_transform(resolution))
    return CsvDataset(path, eval_transform(resolution), **common)


def build_val_loader(
    data_cfg: DataConfig,
    resolution: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    tokenizer: Tokenizer | None = None,
    *,
    dataset: Any = None,
    device: torch.device | str | None = None,
    data_dir: str | Path | None = None,
    log: Log = _print_log,
) -> EvalLoader:
    """One ordered pass over data.val (this rank's share when world_size > 1), eval transform, no drops."""
    dataset = dataset if dataset is not None else build_val_dataset(data_cfg, resolution, tokenizer,
                                                                    data_dir=data_dir, log=log)
    device = torch.device(device) if device is not None else None
    kwargs = _loader_kwargs(data_cfg.num_workers, device)
    if isinstance(dataset, ShardDataset):
        dataset.rank, dataset.world_size = rank, world_size
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, drop_last=False, **kwargs)
    else:
        sampler = ShuffledBatchSampler(len(dataset), batch_size, rank=rank, world_size=world_size,
                                       shuffle=False, drop_last=False)
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=_IndexOnly(sampler), **kwargs)
    return EvalLoader(loader, BatchFinisher(device, resolution))


class _IndexOnly:
    """Plain indices for evaluation: no augmentation seeds (the eval transform is deterministic)."""

    def __init__(self, sampler: ShuffledBatchSampler):
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        for batch in self.sampler:
            yield [index for index, _ in batch]
