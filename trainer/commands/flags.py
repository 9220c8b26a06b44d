"""argparse helpers the commands share: --device (checked without torch, resolved with it) and counts."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"
_DEVICE_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device_flag(spec: str) -> str:
    """argparse type of --device: checks the spelling without importing torch (see resolve_device_flag)."""
    if not _DEVICE_SYNTAX.fullmatch(spec):
        raise argparse.ArgumentTypeError(f"{spec!r} is not a device; use {DEVICE_CHOICES}")
    return spec


def resolve_device_flag(spec: str) -> "torch.device":
    """--device (as device_flag accepted it) -> torch.device; auto is cuda when available, else cpu.

    Raises ValueError naming --device when the device is not on this machine.
    """
    from trainer.devices import resolve_device

    return resolve_device(spec, name="--device")


def non_negative_int(text: str) -> int:
    """argparse type for counts such as --workers."""
    return _int_at_least(text, 0)


def positive_int(text: str) -> int:
    """argparse type for limits such as --limit, where 0 or less would silently show nothing or cut the list."""
    return _int_at_least(text, 1)


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
    return value
