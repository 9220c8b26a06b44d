"""A run's attempts: each launch of its trainer (the first and every resume), with when and why it ended.

Stored as a JSON list on the run (`Run.attempts`): {"started_at", "ended_at", "status", "reason", "exit_code"},
oldest first; the last one is open (`ended_at` null) while its process may run. The run's `started_at` is the
first attempt's start and its duration the sum of the attempts' running times.
"""

from __future__ import annotations

from typing import Any


def opened(attempts: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
    """`attempts` with a new open attempt started at `now` (a new list: JSON columns change by assignment)."""
    return [*attempts, {"started_at": now, "ended_at": None, "status": None, "reason": None, "exit_code": None}]


def closed(attempts: list[dict[str, Any]], ended_at: float, status: str, reason: str | None,
           exit_code: int | None) -> list[dict[str, Any]]:
    """`attempts` with the open attempt ended; unchanged when none is open (a run stopped while queued)."""
    if not attempts or attempts[-1].get("ended_at") is not None:
        return attempts
    last = attempts[-1]
    ended = max(ended_at, last["started_at"])
    return [*attempts[:-1], {**last, "ended_at": ended, "status": status, "reason": reason, "exit_code": exit_code}]


def current_start(attempts: list[dict[str, Any]], started_at: float | None) -> float | None:
    """When the latest attempt started (the run's own start for records without attempts)."""
    return attempts[-1]["started_at"] if attempts else started_at


def duration_s(attempts: list[dict[str, Any]], now: float, started_at: float | None = None,
               finished_at: float | None = None, active: bool = False) -> float | None:
    """Seconds spent running, summed over attempts; an open attempt counts up to `now` while `active`.

    Records from before attempts were kept fall back to finished_at - started_at.
    """
    if not attempts:
        if started_at is None:
            return None
        end = finished_at if finished_at is not None else (now if active else None)
        return max(0.0, end - started_at) if end is not None else None
    total = 0.0
    for attempt in attempts:
        end = attempt.get("ended_at")
        if end is None:
            end = now if active else attempt["started_at"]
        total += max(0.0, end - attempt["started_at"])
    return total


def started_fields(attempts: list[dict[str, Any]], started_at: float | None, at: float) -> dict[str, Any]:
    """Run fields for a job whose trainer started at `at` after a scheduler held it (SLURM's queue): the open
    attempt starts there, and so does the run on its first attempt (a resume keeps the first start)."""
    if attempts and attempts[-1].get("ended_at") is None:
        attempts = [*attempts[:-1], {**attempts[-1], "started_at": at}]
    first = len(attempts) <= 1
    return {"attempts": attempts, "started_at": at if first or started_at is None else started_at, "last_seen": at}
