"""How a run is asked to stop: SIGTERM/SIGINT, or the dashboard of an attached run."""

from __future__ import annotations

import signal
from typing import Any

import torch

from trainer.distributed import DistInfo


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes its step, saves a checkpoint and exits with `stopped`.

    A second SIGINT (Ctrl-C twice) interrupts at once.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.reason: str | None = None  # what the `stopped` status event says

    @classmethod
    def install(cls) -> "StopRequest":
        req = cls()
        req._previous = {s: signal.signal(s, req._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return req

    def uninstall(self) -> None:
        """Put back the handlers that were there before (run() may be called in-process, e.g. by tests)."""
        for signum, handler in getattr(self, "_previous", {}).items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = f"received {signal.Signals(signum).name}"
        self.signal = signum

    def request(self, reason: str) -> None:
        """A stop without a signal (an attached run's dashboard asked): the same path as SIGTERM."""
        if self.signal is None:
            self.reason = reason
            self.signal = signal.SIGTERM

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def agreed(self, step: int, log_every: int, device: torch.device, dist: DistInfo) -> bool:
        """Whether to stop now. Alone: at the first step boundary after the request. Under torchrun every rank
        must stop at the same step (a checkpoint is a collective), so ranks agree at log boundaries, where
        the loop synchronises anyway."""
        if dist.world_size == 1:
            return self.requested
        if step % log_every:
            return False
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
