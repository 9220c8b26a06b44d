"""Loaders: `StepLoader`, an endless, resumable stream of training batches; `EvalLoader`, one pass.

    loader = build_train_loader(cfg.data, batch_size=64, resolution=224, rank=0, world_size=1, seed=0)
    for step, batch in zip(range(steps), loader): ...
    state = loader.state_dict()          # {"epoch": 3, "batch": 17}: batches already handed out
    loader.load_state_dict(state)        # the next batch is the one the uninterrupted run got next

Both finish batches in the consuming process: when built with a device, workers send uint8 images that are
normalised on that device (4x less traffic than float32), and encoded JPEGs (data.gpu_decode) are decoded
on the GPU; otherwise the workers' float images pass through untouched. The batches they yield follow
docs/architecture.md: `image` float [B,3,H,W], `text`, `caption_id`, `image_id`, `label`, `index`, and
`skipped: [(path, reason)]`. Batches whose every item was skipped are not yielded; their reports ride on the
next batch.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import torch

from contract.table import DataError
from trainer.data.samples import batch_size_of, large_image_note
from trainer.transforms import normalize_on_device

MAX_EMPTY_BATCHES = 50  # consecutive all-skipped batches before concluding the data went unreadable


class BatchSource(Protocol):
    """What the StepLoader positions: a batch sampler or a ShardDataset."""

    def set_position(self, epoch: int, start_batch: int = 0) -> None: ...

    def batches_per_epoch(self, epoch: int) -> int: ...


class BatchFinisher:
    """Turns a collated batch's uint8 / encoded images into normalised float images on `device`.

    Only the image moves: the small tensors stay on the CPU so the trainer can trim tokens without a
    device sync, and its own `.to(device)` of the image is then a no-op.
    """

    def __init__(self, device: torch.device | str | None = None, resolution: int | None = None,
                 crop_scale: tuple[float, float] | None = None):
        self.device = torch.device(device) if device is not None else None
        self.resolution, self.crop_scale = resolution, crop_scale

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.device is not None and "image" in batch:
            batch["image"] = batch["image"].to(self.device, non_blocking=True)
        if "image_parts" in batch:
            from trainer.data.gpu_decode import decode_batch_on_device

            if self.resolution is None:
                raise ValueError("encoded images need BatchFinisher(resolution=...) to be decoded")
            device = self.device or torch.device("cpu")
            return decode_batch_on_device(batch, device, self.resolution, self.crop_scale)
        if batch["image"].dtype == torch.uint8:
            batch["image"] = normalize_on_device(batch["image"])
        return batch


class StepLoader:
    """An endless iterator of training batches over epochs of a torch DataLoader.

    `source` (the DataLoader's batch sampler, or its ShardDataset) decides which items form batch k of
    epoch e; the StepLoader counts what it has handed out, so `state_dict()` pins the position and
    `load_state_dict()` continues from it with the same batches in the same order. `log` gets one note for
    the first image that decoded at full size although large (the others only slow loading down too).
    """

    def __init__(self, loader: torch.utils.data.DataLoader, source: BatchSource,
                 finisher: BatchFinisher | None = None, notes: list[str] | None = None,
                 log: Callable[[str], None] | None = None):
        self.loader, self.source = loader, source
        self.finisher = finisher or BatchFinisher()
        self.notes = list(notes or [])  # human-readable facts about the data path, for the run log
        self.log = log
        self._large_noted = False
        self.epoch, self.batch = 0, 0
        self.total_skipped = 0
        self._it: Iterator[dict[str, Any]] | None = None
        if self.batches_per_epoch() == 0:
            raise DataError("the training data yields no full batch per epoch; lower train.batch_size")

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def batches_per_epoch(self) -> int:
        """Batches in the current epoch (the same on every rank)."""
        return self.source.batches_per_epoch(self.epoch)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue after `state["batch"]` batches of epoch `state["epoch"]`."""
        try:
            epoch, batch = int(state["epoch"]), int(state["batch"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"loader state must be {{'epoch': int, 'batch': int}}, got {state!r}") from None
        if epoch < 0 or batch < 0:
            raise ValueError(f"loader state must not be negative, got {state!r}")
        self.epoch, self.batch, self._it = epoch, batch, None

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` from its first batch (DistributedSampler.set_epoch semantics)."""
        self.load_state_dict({"epoch": epoch, "batch": 0})

    def __iter__(self) -> "StepLoader":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._it is None:
            self._it = self._batches()
        return next(self._it)

    def _batches(self) -> Iterator[dict[str, Any]]:
        pending: list[tuple[str, str]] = []
        empty_run = 0
        while True:
            self.source.set_position(self.epoch, self.batch)
            if self.batch < self.source.batches_per_epoch(self.epoch):
                for raw in self.loader:
                    self.batch += 1
                    batch = self.finisher(raw)
                    self.total_skipped += len(batch["skipped"])
                    self._note_large_images(batch)
                    if batch_size_of(batch) == 0:
                        pending += batch["skipped"]
                        empty_run += 1
                        if empty_run >= MAX_EMPTY_BATCHES:
                            raise DataError(_unreadable_message(empty_run, pending))
                        continue
                    empty_run = 0
                    if pending:
                        batch["skipped"], pending = pending + batch["skipped"], []
                    yield batch
            self.epoch, self.batch = self.epoch + 1, 0

    def _note_large_images(self, batch: dict[str, Any]) -> None:
        if self._large_noted or not batch.get("large_images"):
            return
        note = large_image_note(*batch["large_images"][0])
        self.notes.append(note)
        if self.log is not None:
            self.log(note)
        self._large_noted = True

    def close(self) -> None:
        """Stop worker processes now rather than at garbage collection."""
        self._it = None
        self.loader._iterator = None  # persistent workers are shut down when their iterator is dropped


class EvalLoader:
    """One pass over a dataset in order; yields finished batches, drops all-skipped ones.

    `skipped` collects every (path, reason) of the pass, including those of dropped batches.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, finisher: BatchFinisher | None = None):
        self.loader, self.finisher = loader, finisher or BatchFinisher()
        self.skipped: list[tuple[str, str]] = []

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.skipped = []
        for raw in self.loader:
            batch = self.finisher(raw)
            self.skipped += batch["skipped"]
            if batch_size_of(batch) > 0:
                yield batch


def _unreadable_message(batches: int, skipped: list[tuple[str, str]]) -> str:
    examples = "\n  ".join(f"{path}: {reason}" for path, reason in skipped[:4])
    return f"the last {batches} batches held no readable image; the data has become unusable. Examples:\n  {examples}"
