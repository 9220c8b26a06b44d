"""Device and numeric precision: which device, which autocast, whether a GradScaler.

bf16 keeps fp32's exponent range, so it needs no loss scaling; fp16 does (GradScaler). The CPU trains in
fp32 unless bf16 is asked for explicitly.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from contract.config import ConfigError
from trainer.devices import DeviceError, resolve_device

_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def resolve_train_device(spec: str, rank_device: torch.device, local_rank: int = 0) -> torch.device:
    """train.device -> torch.device (trainer.devices' rule). `auto` takes `rank_device`, the device
    init_distributed chose for this rank; a device this machine lacks is a ConfigError naming train.device."""
    if spec == "auto":
        return rank_device
    try:
        return resolve_device(spec, local_rank, name="train.device")
    except DeviceError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class Precision:
    """The resolved train.precision for one device."""

    name: str  # fp32 / bf16 / fp16
    device: torch.device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _AUTOCAST_DTYPES[self.name]

    def autocast(self):
        """Context manager for forward passes: autocast in bf16/fp16, a no-op in fp32."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16 only: bf16 and fp32 gradients do not underflow the way fp16 ones do."""
        return torch.amp.GradScaler(self.device.type) if self.name == "fp16" else None


def resolve_precision(name: str, device: torch.device) -> Precision:
    """train.precision -> Precision. auto = bf16 on a CUDA device that supports it (else fp16), fp32 on CPU."""
    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA device (got {device}); use fp32 or bf16")
    if name not in _AUTOCAST_DTYPES:
        raise ConfigError(f"train.precision: {name!r} is not one of auto, fp32, bf16, fp16")
    return Precision(name, device)
