"""Executors by name. A new one (Ray Jobs, Kubernetes) is a module with an `Executor` subclass and a line in
`_FACTORIES` that builds it from the server settings (and its name in `settings.EXECUTOR_NAMES`)."""

from __future__ import annotations

import logging
from typing import Callable

from backend.services.executors.base import Executor, ExecutorError, JobState, TrainerJob
from backend.settings import EXECUTOR_NAMES, Settings

__all__ = ["Executor", "ExecutorError", "JobState", "TrainerJob", "EXECUTOR_NAMES", "build_executors"]


def _local(settings: Settings) -> Executor:
    from backend.services.executors.local import LocalExecutor

    return LocalExecutor()


def _slurm(settings: Settings) -> Executor:
    from backend.services.executors.slurm import SlurmExecutor

    if settings.public_url is None:
        logging.getLogger("cliplab.launcher").warning(
            "SLURM jobs will push their events to %s, which compute nodes cannot reach: set CLIPLAB_PUBLIC_URL "
            "(until then the server reads each run's events.jsonl from the shared run directory)",
            settings.server_url)
    return SlurmExecutor(settings.slurm, settings.stop_grace_s)


# One factory for each of settings.EXECUTOR_NAMES.
_FACTORIES: dict[str, Callable[[Settings], Executor]] = {"local": _local, "slurm": _slurm}


def build_executors(settings: Settings) -> dict[str, Executor]:
    """The executors the settings enable, by name (the local one always exists: it adopts runs a previous
    server started locally, even when new local runs are switched off)."""
    names = dict.fromkeys(["local", *settings.executors])
    return {name: _FACTORIES[name](settings) for name in names}
