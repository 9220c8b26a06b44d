"""Where the run is: the step counter (written only here), the heartbeat, and rank 0's terminal output."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from trainer.events import EventWriter

HEARTBEAT_S = 10.0


class TrainProgress:
    """The optimizer steps taken so far and the number to take; a checkpoint component ("step")."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.step = 0

    def advance(self) -> None:
        """One more optimizer step done."""
        self.step += 1

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def every(self, interval: int) -> bool:
        """Whether this step is a multiple of `interval` or the last one (when logs and evals happen)."""
        return self.step % interval == 0 or self.step == self.total_steps

    def state_dict(self) -> int:
        return self.step

    def load_state_dict(self, step: int) -> None:
        self.step = int(step)


class Heartbeat:
    """A `heartbeat` event at most every HEARTBEAT_S seconds, so a long step or eval never looks like a lost run."""

    def __init__(self, events: EventWriter, progress: TrainProgress):
        self.events, self.progress = events, progress
        self.last = time.monotonic()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_S:
            self.events.emit("heartbeat", step=self.progress.step, total_steps=self.progress.total_steps)
            self.last = now


def silence_stdout() -> None:
    """Point stdout at /dev/null once it cannot be written (its reader gone): later lines, the summary and
    the interpreter's last flush then succeed instead of raising BrokenPipeError (or exiting 120)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real file descriptor behind sys.stdout
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


class Console:
    """Rank 0's terminal: plain lines, written above a tqdm progress bar while one is open; `say` also
    records the line as a `log` event. Other ranks print nothing."""

    def __init__(self, events: EventWriter, is_main: bool):
        self.events, self.is_main = events, is_main
        self.bar: Any = None

    def say(self, message: str, level: str = "info") -> None:
        """A line on stdout (rank 0) and a `log` event."""
        self.print(message)
        self.events.log(message, level=level)

    def print(self, message: str) -> None:
        if not self.is_main:
            return
        try:
            if self.bar is not None:
                self.bar.write(message)  # above the bar instead of through it
            else:
                print(message, flush=True)
        except OSError as exc:  # stdout is gone (`| head`, a dead `tee`, a full disk): the run is not
            self._lose_stdout(exc)

    def _lose_stdout(self, exc: OSError) -> None:
        """Silence stdout and say so once in events.jsonl, which keeps every line; training goes on."""
        silence_stdout()
        self.events.log(f"stdout can no longer be written ({type(exc).__name__}: {exc}); training goes on, "
                        "its lines stay in events.jsonl", level="warning")

    def open_bar(self, progress: TrainProgress, name: str) -> None:
        """A tqdm bar (rate, ETA, last loss) on a terminal; redirected output gets only the plain log lines,
        which carry the rate and ETA themselves."""
        if not (self.is_main and sys.stdout.isatty() and sys.stderr.isatty()):
            return
        from tqdm import tqdm

        try:  # tqdm hides its bar on a terminal that reports no size (a bare pty): assume 100 x 40 there
            sized = os.get_terminal_size(sys.stderr.fileno()).columns > 0
        except OSError:
            sized = False
        self.bar = tqdm(total=progress.total_steps, initial=progress.step, unit="step", desc=name,
                        dynamic_ncols=sized, **({} if sized else {"ncols": 100, "nrows": 40}))

    def advance_bar(self, loss: float | None = None) -> None:
        if self.bar is None:
            return
        if loss is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self.bar.update(1)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
