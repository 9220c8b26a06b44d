"""What the training loop measures and where it writes it: device-side accumulators, throughput and MFU,
metrics.csv.

The loop never reads a number back from the GPU on an ordinary step: per-step values are summed into device
tensors and read back in one transfer every train.log_every steps.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Iterable

import torch

SEED_COLUMNS = ["time", "step", "train_loss", "lr", "acc", "similarity"]
TRAIN_COLUMNS = ["logit_scale", "grad_norm", "samples_per_s", "samples_per_s_per_device", "step_time",
                 "tflops_per_device", "mfu", "peak_memory_gb"]
# The metric-event name of each metrics.csv column that is named differently there (the seed's names).
CSV_NAMES = {"loss": "train_loss"}

# Dense bf16/fp16 tensor-core peaks (FLOP/s) for MFU; matched against torch.cuda.get_device_name().
_PEAK_FLOPS = [("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("A10G", 70e12),
               ("A10", 125e12), ("L4", 121e12), ("V100", 125e12), ("4090", 165e12), ("3090", 71e12)]


class LogWindow:
    """Sums of per-step device scalars since the last log; `read()` is the one host transfer."""

    def __init__(self, names: Iterable[str], device: torch.device):
        self.names = list(names)
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=self.device)
        self.steps = 0

    def add(self, **values: torch.Tensor) -> None:
        self.sums += torch.stack([values[n].detach().to(torch.float64) for n in self.names])
        self.steps += 1

    def read(self) -> dict[str, float]:
        """Means over the window (one device->host copy), then reset."""
        totals = self.sums.tolist()
        means = {n: t / max(1, self.steps) for n, t in zip(self.names, totals)}
        self.reset()
        return means

    def state_dict(self) -> dict[str, Any]:
        return {"sums": self.sums.cpu(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums = state["sums"].to(self.device, torch.float64)
        self.steps = int(state["steps"])


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak in FLOP/s when known (for MFU), else None (e.g. on a CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in _PEAK_FLOPS if key in name), None)


def train_flops_per_sample(model: torch.nn.Module, image: torch.Tensor, text: torch.Tensor) -> float | None:
    """FLOPs of forward+backward for one image-text pair, counted by torch on a one-pair forward.

    Backward costs about twice the forward (the usual 3x rule). Returns None when counting fails.
    """
    from torch.utils.flop_counter import FlopCounterMode

    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(image[:1], text[:1])
        return 3.0 * counter.get_total_flops()
    except Exception:  # an op the counter cannot trace must not stop training; MFU is then just absent
        return None


class MetricsCsv:
    """metrics.csv: the seed's columns first, then train and eval columns; the header grows if a new name
    appears (the file is rewritten once). On resume, rows after the resumed step are dropped so a crash
    between checkpoint and log never leaves a step twice."""

    def __init__(self, path: str | os.PathLike, extra_columns: Iterable[str] = (), resume_step: int | None = None):
        self.path = Path(path)
        columns = SEED_COLUMNS + TRAIN_COLUMNS + [c for c in extra_columns if c not in SEED_COLUMNS + TRAIN_COLUMNS]
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.path.is_file():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                old = reader.fieldnames or []
                columns += [c for c in old if c not in columns]
                rows = [r for r in reader if r.get("step") and int(r["step"]) <= resume_step]
        self.columns = columns
        self._rewrite(rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: dict[str, Any]) -> None:
        row = {CSV_NAMES.get(k, k): v for k, v in row.items()}
        new = [k for k in row if k not in self.columns]
        if new:
            with self.path.open(newline="") as f:
                old_rows = list(csv.DictReader(f))
            self.columns += new
            self._rewrite(old_rows)
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: _fmt(k, v) for k, v in row.items()})


def _fmt(column: str, value: Any) -> Any:
    if column == "time":
        return f"{value:.3f}"  # unix seconds: %g would round them to the 1000 s
    if isinstance(value, float):
        return f"{value:.7g}"
    return value
