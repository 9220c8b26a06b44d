"""Read side of the event store: metric series (downsampled in SQL), evals, similarity matrices, events.

`downsample_minmax` returns a series' raw points when they are few, else its min/max/last step buckets
(store/series.py), so a 1,000,000-point loss curve becomes ~1000 points without hiding spikes.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from backend import store
from backend.errors import NotFound
from backend.models import Run
from contract.events import MAX_STEP

SERIES_KEYS = ("step", "time", "min", "max", "last")


def downsample_minmax(session: Session, run_id: str, name: str, start: int | None, end: int | None,
                      buckets: int) -> tuple[dict[str, list], bool]:
    """The series `name` of `run_id` over [start, end] in at most `buckets` points.

    Returns ({"step", "time", "min", "max", "last", "nonfinite"}, downsampled). Raw points come back unchanged
    (min = max = last = value) when there are no more than `buckets` of them. `nonfinite`: the values over the
    range that were NaN or inf (stored as null; no point of the series), store.series_nonfinite, or None.
    """
    lo = 0 if start is None else max(0, start)
    hi = MAX_STEP if end is None else min(end, MAX_STEP)
    nonfinite = store.series_nonfinite(session, run_id, name, lo, hi)
    raw = store.series_points(session, run_id, name, lo, hi, buckets + 1)
    if len(raw) <= buckets:
        steps, times, values = ([r[i] for r in raw] for i in range(3))
        return {"step": steps, "time": times, "min": values, "max": values, "last": values,
                "nonfinite": nonfinite}, False
    lo, hi = store.series_step_range(session, run_id, name, lo, hi)
    out: dict[str, Any] = {key: [] for key in SERIES_KEYS}
    out["nonfinite"] = nonfinite
    previous_bucket = None
    for b, vmin, vmax, step, _seq, t, value in store.series_buckets(session, run_id, name, lo, hi, buckets):
        if b == previous_bucket:  # same last step, higher seq: replaces the earlier row
            out["time"][-1], out["last"][-1] = t, value
            continue
        previous_bucket = b
        for key, v in zip(SERIES_KEYS, (step, t, vmin, vmax, value)):
            out[key].append(v)
    return out, True


def wanted_names(values: list[str] | None, known: list[str]) -> list[str] | None:
    """The metric names a series request asks for: each value whole when the run has a metric of that name
    (names may hold commas), else split on commas; None (all) when none is given."""
    if not values:
        return None
    known_names = set(known)
    return [name for value in values for name in ([value] if value in known_names else value.split(",")) if name]


def series(session: Session, run: Run, names: list[str] | None, start: int | None, end: int | None,
           buckets: int) -> dict[str, Any]:
    """The named series of `run` (default: all it logged), each downsampled to at most `buckets` points."""
    result, any_downsampled = {}, False
    for name in run.metric_names if names is None else names:
        result[name], downsampled = downsample_minmax(session, run.id, name, start, end, buckets)
        any_downsampled |= downsampled
    return {"series": result, "downsampled": any_downsampled}


def evals(session: Session, run_id: str) -> list[dict[str, Any]]:
    """The run's evaluations in seq order, less those a later resume from an earlier step replaced (a rewind's
    abandoned stretch, a crash resume's redone one), as its charts have them."""
    resumes = store.resumes_after(session, run_id)
    return [
        {"step": ev.get("step"), "time": ev.get("time"), "values": ev.get("values", {}),
         "batch_size": ev.get("batch_size")}
        for ev in store.events_of_kind(session, run_id, "eval") if not store.superseded(ev, resumes)
    ]


def matrix_steps(session: Session, run_id: str) -> list[dict[str, Any]]:
    """The steps with a similarity matrix, less those only a replaced stretch recorded (as `evals`)."""
    resumes = store.resumes_after(session, run_id)
    return [{"step": step, "seq": seq} for step, seq in store.matrix_steps(session, run_id)
            if not store.superseded({"step": step, "seq": seq}, resumes)]


def matrix_at(session: Session, run_id: str, step: int) -> dict[str, Any]:
    """The last similarity matrix recorded at `step` (a resumed branch's, when it recorded that step again), or
    NotFound: none was recorded there, or only a stretch a later resume replaced did (as `matrix_steps`)."""
    found = store.matrix_at(session, run_id, step)
    if found is None:
        raise NotFound(f"run {run_id!r} has no similarity matrix at step {step}")
    later = store.resumes_after(session, run_id, found["seq"])
    replaced_by = [resume for resume in later if store.superseded(found, [resume])]
    if replaced_by:
        resumed_from = min(replaced_by)[1]  # the first resume that abandoned it
        raise NotFound(f"run {run_id!r} has no similarity matrix at step {step} any more: the one recorded there "
                       f"was superseded by a resume from step {resumed_from}, which has not recorded one at step "
                       f"{step}; GET /api/runs/{run_id}/matrices lists the steps it has")
    return found


def events_page(session: Session, run: Run, after: int, limit: int) -> dict[str, Any]:
    """Up to `limit` stored events with seq > after, oldest first, and the run's highest seq."""
    return {"events": store.events_after(session, run.id, after, limit), "last_seq": run.last_seq}


def recent_log_events(session: Session, run_id: str, n: int) -> list[dict[str, Any]]:
    """The run's last `n` `log` events, oldest first."""
    return store.events_of_kind(session, run_id, "log", n, newest=True)
