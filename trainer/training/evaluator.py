"""Evaluation during training: every eval.every steps and at the end, on every rank's share of the val set;
and the best-by-metric tracker that decides when a `best` checkpoint is kept."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from contract.config import RunConfig
from trainer.distributed import DistInfo
from trainer.events import EventWriter
from trainer.training.build import set_train_mode
from trainer.training.data_feed import report_val_skipped
from trainer.training.precision import Precision
from trainer.training.progress import Console, TrainProgress


class BestTracker:
    """The best value of checkpoint.best_metric so far; a checkpoint component ("best")."""

    def __init__(self, cfg: RunConfig, console: Console):
        self.metric, self.mode, self.console = cfg.checkpoint.best_metric, cfg.checkpoint.best_mode, console
        self.best: dict[str, Any] | None = None  # {"metric", "value", "step"}

    def improves(self, values: dict[str, float], step: int) -> bool:
        """Whether `values` beat the best so far (and then they are the best)."""
        if self.metric is None:
            return False
        value = values.get(self.metric)
        if value is None or not math.isfinite(value):
            if self.metric not in values:
                self.console.say(f"checkpoint.best_metric {self.metric!r} is not among the eval metrics "
                                 f"({', '.join(sorted(values))}); no best checkpoint is kept", level="warning")
            return False
        better = self.best is None or (value < self.best["value"] if self.mode == "min" else value > self.best["value"])
        if better:
            self.best = {"metric": self.metric, "value": value, "step": step}
        return better

    def state_dict(self) -> dict[str, Any] | None:
        return self.best

    def load_state_dict(self, best: dict[str, Any] | None) -> None:
        self.best = best


class Evaluator:
    """Runs the val set through the model on every rank; rank 0 emits the eval and matrix events."""

    def __init__(self, cfg: RunConfig, val_dataset: Any, dist: DistInfo, precision: Precision,
                 events: EventWriter, console: Console, progress: TrainProgress, heartbeat: Callable[[], None]):
        self.cfg, self.val_dataset, self.dist, self.precision = cfg, val_dataset, dist, precision
        self.events, self.console, self.progress, self.heartbeat = events, console, progress, heartbeat

    def due(self) -> bool:
        """Whether this step evaluates: every eval.every steps and at the last, when there is a val set."""
        return self.val_dataset is not None and self.progress.every(self.cfg.eval.every)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Every rank encodes its share of the val set and gets the same metrics; returns them."""
        from trainer.evaluate import evaluate, matrix_snapshot

        device, step = self.precision.device, self.progress.step
        try:
            result = evaluate(model, self.val_dataset, self.cfg.eval, device, autocast=self.precision.autocast,
                              num_workers=self.cfg.data.num_workers, rank=self.dist.rank,
                              world_size=self.dist.world_size,
                              on_batch=self.heartbeat)  # a long eval must not look like a silent, lost run
            values = dict(result)
            self.events.emit("eval", step=step, values=values, batch_size=result.batch_size)
            report_val_skipped(result.skipped, step, self.events, self.console)
            if self.dist.is_main:
                snapshot = matrix_snapshot(model, self.val_dataset, self.cfg.eval.matrix_size, device,
                                           autocast=self.precision.autocast)
                self.events.emit("matrix", step=step, **snapshot)
        finally:
            set_train_mode(model, self.cfg)
        self.console.print(f"eval step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in values.items()))
        return values
