"""Which torch.device a device spec ("auto", "cpu", "cuda", "cuda:1", "mps") means on this machine.

One rule for every caller: the training program (train.device, torchrun's ranks), `init_distributed` and the
CLI's --device flags. A spec that this machine cannot honour raises DeviceError saying why; callers put the
name of their field or flag in front of the message.
"""

from __future__ import annotations

import torch

DEVICE_SPECS = "auto, cpu, cuda, cuda:N or mps"


class DeviceError(ValueError):
    """A device spec that is misspelt or names a device this machine does not have."""


def resolve_device(spec: str, local_rank: int = 0, name: str = "device") -> torch.device:
    """`spec` -> the torch.device this process uses.

    auto: this rank's GPU (cuda:`local_rank`) when CUDA is available, else the CPU. cuda: cuda:`local_rank`
    (under torchrun each rank takes its own GPU). cuda:N, cpu and mps: as written, when present here.
    Raises DeviceError, its message starting "<name> <spec>: " (name: the field or flag that holds `spec`),
    when `spec` is no device or names one this machine does not have.
    """
    try:
        return _resolve(spec, local_rank)
    except DeviceError as exc:
        raise DeviceError(f"{name} {spec}: {exc}") from None


def _resolve(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise DeviceError(f"not a device; use {DEVICE_SPECS}") from None
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("MPS is not available on this machine; use auto or cpu")
    if device.type == "cuda":
        return _cuda_device(device.index if device.index is not None else local_rank)
    return device


def _cuda_device(index: int) -> torch.device:
    """cuda:`index`, when this machine has that GPU."""
    if not torch.cuda.is_available():
        raise DeviceError("CUDA is not available on this machine; use auto or cpu")
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)
