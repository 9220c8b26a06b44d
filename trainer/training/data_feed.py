"""The training data as the loop sees it: micro-batches on the device, equal in size on every rank, and the
unreadable images the loader skipped, reported as data_warning events."""

from __future__ import annotations

from typing import Any, Callable

import torch

from contract.config import RunConfig
from contract.table import DataError
from trainer.distributed import DistInfo, gather_objects
from trainer.events import EventWriter
from trainer.model import trim_tokens
from trainer.training.build import naming_field
from trainer.training.progress import Console

EXAMPLES = 5  # unreadable files named in one data_warning


class SkippedImages:
    """Unreadable images: counted per log window and in all; a checkpoint component ("total_skipped")."""

    def __init__(self) -> None:
        self.count = 0  # since the last report
        self.examples: list[tuple[str, str]] = []
        self.total = 0

    def add(self, skipped: list[tuple[str, str]]) -> None:
        self.count += len(skipped)
        self.examples.extend(skipped[: max(0, EXAMPLES - len(self.examples))])

    def report(self, step: int, events: EventWriter, console: Console) -> None:
        """One data_warning event and terminal line for the images skipped since the last report, if any."""
        if not self.count:
            return
        self.total += self.count
        warn_skipped(events, console, step, "train", self.count, self.examples, self.total)
        self.count, self.examples = 0, []

    def state_dict(self) -> int:
        return self.total

    def load_state_dict(self, total: int | None) -> None:
        self.total = int(total or 0)  # checkpoints from before the count have none


def warn_skipped(events: EventWriter, console: Console, step: int, split: str, count: int,
                 examples: list[tuple[str, str]], total: int) -> None:
    """A data_warning event (split "val" for evaluation) and its one terminal line."""
    fields = {"split": split} if split != "train" else {}
    events.emit("data_warning", step=step, **fields, skipped=count, total_skipped=total,
                examples=[{"path": str(p), "reason": str(r)} for p, r in examples[:EXAMPLES]])
    path, reason = examples[0] if examples else ("?", "?")
    console.print(f"[data] warning: skipped {count} unreadable {split} image(s) at step {step} "
                  f"({total} in all), e.g. {path}: {reason}")


def report_val_skipped(skipped: list[tuple[str, str]], step: int, events: EventWriter, console: Console) -> None:
    """Unreadable val images, from every rank, as one data_warning (split "val") from rank 0."""
    skipped = [item for part in gather_objects(skipped) for item in part]
    if skipped:
        warn_skipped(events, console, step, "val", len(skipped), skipped, len(skipped))


class DataFeed:
    """Micro-batches for the training step, from this rank's loader; a checkpoint component per rank ("loader")."""

    def __init__(self, loader: Any, cfg: RunConfig, device: torch.device, dist: DistInfo):
        self.loader, self.cfg, self.device, self.dist = loader, cfg, device, dist
        self.skipped = SkippedImages()
        # Ranks exchange batch sizes (a skipped image shortens a batch) over a CPU group: no GPU sync.
        self._cpu_group = None
        if dist.world_size > 1 and torch.distributed.get_backend() != "gloo":
            self._cpu_group = torch.distributed.new_group(backend="gloo")

    def next_micro_batch(self) -> dict[str, torch.Tensor]:
        """The next batch on the device: image, text (trimmed when model.trim_text), and caption_id and image_id
        when the batch has them."""
        batch = self._equal_across_ranks(next(self.loader))
        self.skipped.add(batch.get("skipped") or [])
        text = batch["text"]
        if self.cfg.model.trim_text:
            text = trim_tokens(text)  # on the CPU copy, before the transfer: no device sync
        out = {"image": batch["image"].to(self.device, non_blocking=True),
               "text": text.to(self.device, non_blocking=True)}
        for key in ("caption_id", "image_id"):  # the loss uses them only with loss.multi_positive
            if batch.get(key) is not None:
                out[key] = batch[key].to(self.device, non_blocking=True)
        return out

    def _equal_across_ranks(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Cut the batch to the smallest batch of any rank: gathering features needs equal shapes, and a
        skipped image makes one rank's batch shorter."""
        if self.dist.world_size == 1:
            return batch
        n = batch["text"].shape[0]
        size = torch.tensor([n], dtype=torch.int64)
        torch.distributed.all_reduce(size, op=torch.distributed.ReduceOp.MIN, group=self._cpu_group)
        m = int(size)
        if m == n:
            return batch
        return {k: (v[:m] if isinstance(v, torch.Tensor) and v.ndim > 0 and v.shape[0] == n else v)
                for k, v in batch.items()}

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def close(self) -> None:
        """Shut the data-loader workers down now, not at interpreter exit."""
        self.loader.close()


def build_data(cfg: RunConfig, resolution: int, dist: DistInfo, device: torch.device,
               log: Callable[[str], None]) -> tuple[DataFeed, Any]:
    """(this rank's DataFeed over data.train, the val dataset of data.val or None). Data errors name the field."""
    from trainer.data import build_train_loader, build_val_dataset

    with naming_field("data.train"):
        loader = build_train_loader(cfg.data, cfg.train.batch_size, resolution, dist.rank, dist.world_size,
                                    cfg.train.seed, device=device, log=log)
    val_dataset = None
    if cfg.data.val:
        with naming_field("data.val"):
            val_dataset = build_val_dataset(cfg.data, resolution, log=log)
            if len(val_dataset) < 2:  # in-batch metrics compare each pair with the others
                raise DataError(f"{cfg.data.val} lists {len(val_dataset)} pair(s); evaluation needs "
                                "at least 2 (or set data.val to null to train without evaluation)")
    return DataFeed(loader, cfg, device, dist), val_dataset

