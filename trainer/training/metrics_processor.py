"""The training metrics from device scalars to their three destinations: `metric` events, metrics.csv rows
and the terminal line. Throughput (samples/s, TFLOP/s, MFU) is measured between log steps, evals excluded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from contract.config import RunConfig
from contract.run_dir import METRICS_FILE
from trainer.distributed import DistInfo
from trainer.events import EventWriter
from trainer.training.metrics import LogWindow, MetricsCsv, peak_flops, train_flops_per_sample
from trainer.training.progress import Console, TrainProgress

LOG_WINDOW = ("loss", "acc", "similarity", "grad_norm")


class MetricsProcessor:
    """Collects each step's scalars on the device (`add_step`), and every train.log_every steps reads them
    back once (`log`). The log window is a checkpoint component ("log_window")."""

    def __init__(self, cfg: RunConfig, dist: DistInfo, device: torch.device, events: EventWriter,
                 console: Console, progress: TrainProgress):
        self.cfg, self.dist, self.device, self.events, self.console = cfg, dist, device, events, console
        self.progress = progress
        self.window = LogWindow(LOG_WINDOW, device)
        self.csv: MetricsCsv | None = None
        self.flops_per_sample: float | None = None  # counted on the first step's batch
        self.peak_flops = peak_flops(device)
        self.lr = 0.0
        self.start()

    def open_csv(self, run_dir: Path, resume_step: int | None) -> None:
        """metrics.csv (rank 0 only); on resume, rows after `resume_step` are dropped."""
        if self.dist.is_main:
            self.csv = MetricsCsv(run_dir / METRICS_FILE, resume_step=resume_step)

    def start(self) -> None:
        """Training (re)starts now: the rate and ETA count from here."""
        self._train_start, self._first_step = time.perf_counter(), self.progress.step
        self.restart_throughput()

    def restart_throughput(self) -> None:
        """Throughput counts from now (after an eval: eval time is not training throughput)."""
        self._tput_start, self._tput_steps = time.perf_counter(), 0

    def count_flops(self, model: torch.nn.Module, micro_batch: dict[str, torch.Tensor]) -> None:
        """FLOPs per sample from one forward of `model` (in eval mode; the caller restores train mode)."""
        if self.flops_per_sample is None:
            model.eval()  # so BatchNorm statistics are not touched by this extra forward
            self.flops_per_sample = train_flops_per_sample(model, micro_batch["image"], micro_batch["text"]) or 0.0

    def add_step(self, lr: float, **values: torch.Tensor) -> None:
        """One optimizer step's device scalars (LOG_WINDOW) and the learning rate it used."""
        self.window.add(**values)
        self.lr = lr
        self._tput_steps += 1

    def log(self, model: torch.nn.Module, skipped_count: int) -> dict[str, float]:
        """Read the window back (the one sync point), add throughput, emit a `metric` event, print a line;
        returns the values for the metrics.csv row. `skipped_count`: images skipped since the last log."""
        values = self.window.read()
        values.update(lr=self.lr, logit_scale=float(model.logit_scale.detach().exp()),
                      **self._throughput(skipped_count))
        if self.device.type == "cuda":
            values["peak_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.restart_throughput()
        self.events.emit("metric", step=self.progress.step, values=values)
        self.console.print(f"step {self.progress.step}/{self.progress.total_steps} | loss {values['loss']:.4f} | "
                           f"acc {values['acc']:.3f} | sim {values['similarity']:.3f} | lr {values['lr']:.2e} | "
                           f"scale {values['logit_scale']:.1f} | {values['samples_per_s']:.0f} samples/s | "
                           f"{self._rate_and_eta()}")
        return values

    def _throughput(self, skipped_count: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._tput_start, 1e-9)
        per_step = self.cfg.train.batch_size * self.cfg.train.accum_steps
        # Unreadable images shrink batches; count the samples that were really trained on.
        sps_device = max(0, per_step * self._tput_steps - skipped_count) / elapsed
        values = {"samples_per_s": sps_device * self.dist.world_size, "samples_per_s_per_device": sps_device,
                  "step_time": elapsed / max(1, self._tput_steps)}
        if self.flops_per_sample:
            values["tflops_per_device"] = self.flops_per_sample * sps_device / 1e12
            if self.peak_flops:
                values["mfu"] = self.flops_per_sample * sps_device / self.peak_flops
        return values

    def _rate_and_eta(self) -> str:
        """Steps per second since this process began training (evals included: they take wall time too) and
        the time left at that pace, for logs where no progress bar is drawn."""
        from trainer.run_summary import format_duration

        done = self.progress.step - self._first_step
        elapsed = time.perf_counter() - self._train_start
        if done <= 0 or elapsed <= 0:
            return "ETA -"
        rate = done / elapsed
        return f"{rate:.2f} steps/s | ETA {format_duration((self.progress.total_steps - self.progress.step) / rate)}"

    def write_row(self, row: dict[str, Any]) -> None:
        """One metrics.csv row for this step (train and/or eval values), when there is any."""
        if row and self.csv is not None:
            self.csv.write({"time": time.time(), "step": self.progress.step, **row})
