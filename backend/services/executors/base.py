"""The executor interface: how the launcher runs a trainer command somewhere and watches it.

The launcher owns the queue, the run states and lost-run detection; an executor only knows how to start the
trainer for a run on its kind of machine(s) and answer for it afterwards:

- `submit(job)` starts (or hands to a scheduler) the command for one run attempt and returns what must be
  stored on the run to find it again (a pid, a SLURM job id ...);
- `poll(runs)` says, for each run it handles, whether its job is pending (with the scheduler's reason),
  running (and where) or ended (with an exit code and, for a scheduler, its verdict);
- `request_stop(run)` asks the trainer to stop (SIGTERM: it saves a checkpoint) and `kill(run)` ends it
  after the launcher's grace period;
- `reattach(run)` is the restart path: after the server restarts it finds the job again from what was
  stored (False when it is gone, and the launcher finalizes the run from its events);
- `log_path(run)` is the file the logs view shows (the trainer's stdout and stderr).

A new executor is one module with a subclass of `Executor` plus a line in `executors/__init__.py`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from backend.models import Run
from contract.run_dir import CHECKPOINTS_DIR, STDOUT_LOG

Phase = Literal["pending", "running", "ended"]


@dataclass
class TrainerJob:
    """One attempt of a run: what to run, where its files are, and the environment the trainer needs."""

    run: Run
    run_dir: Path
    config_path: Path
    env: dict[str, str]  # the trainer's identity (server URL, run id, token) and settings; no server secrets
    devices: list[int] = field(default_factory=list)  # local GPUs the launcher assigned (local executor)


@dataclass
class JobState:
    """What an executor knows about a run's job right now."""

    phase: Phase
    reason: str | None = None  # pending: why (SLURM's Resources, Priority ...)
    exit_code: int | None = None  # ended: the exit code (negative: killed by that signal); None: unknown
    ended_by: str | None = None  # ended by the scheduler itself (cancelled elsewhere, time limit, node failure)
    timed_out: bool = False  # ended by its time limit (the trainer had a SIGTERM to checkpoint on)
    where: dict[str, Any] = field(default_factory=dict)  # run fields to record (e.g. the node list)


def resume_dir(run: Run, run_dir: Path) -> Path | None:
    """The step directory the run's next attempt resumes from when one was picked (checkpoints/<run.resume_from>,
    a name the API checked), else None: a fresh start, or `--resume latest`."""
    return run_dir / CHECKPOINTS_DIR / run.resume_from if run.resume and run.resume_from else None


def append_log(run_dir: Path, message: str) -> None:
    """A `[cliplab <time>] message` line in the run's stdout.log, beside what the trainer printed."""
    try:
        with (run_dir / STDOUT_LOG).open("a", encoding="utf-8") as f:
            f.write(f"[cliplab {time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")
    except OSError:
        pass


class ExecutorError(Exception):
    """The executor could not start the job; the message names what to fix."""


class Executor(ABC):
    name: ClassVar[str]

    @abstractmethod
    def submit(self, job: TrainerJob) -> dict[str, Any]:
        """Start the job; returns the Run fields that identify it (stored before the next poll)."""

    @abstractmethod
    def poll(self, runs: list[Run]) -> dict[str, JobState]:
        """The state of each given run's job (run id -> state); runs it knows nothing about are left out."""

    @abstractmethod
    def request_stop(self, run: Run) -> str:
        """Ask the trainer to stop with a checkpoint; returns a line for the run's log."""

    @abstractmethod
    def kill(self, run: Run) -> None:
        """End the job now (the stop grace period is over)."""

    @abstractmethod
    def reattach(self, run: Run) -> bool:
        """After a server restart: watch the run's job again; False when it no longer exists."""

    def alive(self, run: Run) -> bool:
        """Whether the job is known to be running (lost-run detection only marks such runs `lost`)."""
        return self.poll([run]).get(run.id, JobState("ended")).phase == "running"

    def log_path(self, run: Run) -> Path:
        return Path(run.run_dir) / STDOUT_LOG

    def forget(self, run_id: str) -> None:
        """Drop what is remembered about a run that ended."""

    def describe(self) -> dict[str, Any]:
        """What `GET /api/system` shows about this executor."""
        return {"name": self.name}
