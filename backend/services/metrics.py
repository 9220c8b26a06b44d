"""Read side of the event store: metric series (downsampled in SQL), evals, similarity matrices, events.

`downsample_minmax` groups a series into at most N step buckets in one SQL statement, keeping each bucket's
min, max and last value, so a 1,000,000-point loss curve becomes ~1000 points without hiding spikes. Buckets
wider than 16 steps read the series' rollups (services/rollups.py) plus the raw points at their edges.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlmodel import Session, select

from backend.models import Event
from backend.services.rollups import buckets_sql, levels_for

# One statement per series. Bucket b holds the steps with floor((step - lo) * n / span) == b, i.e. the step
# range [lo + ceil(b * span / n), lo + ceil((b + 1) * span / n)). Each bucket's min and max come from a range
# scan of the primary key, its last step from one index seek; the join back on (run_id, name, last_step)
# fetches that point's value and time (ties at one step, which a resumed run repeats, go to the highest seq).
# This is the GROUP BY-bucket aggregation without the sort SQLite puts behind a computed GROUP BY key; it
# reads every point, so it serves buckets narrower than a rollup block (wider ones: rollups.buckets_sql).
_BUCKETS_SQL = text("""
WITH RECURSIVE buckets(b) AS (
    SELECT 0 UNION ALL SELECT b + 1 FROM buckets WHERE b + 1 < :n
), bounds AS (
    SELECT b,
           CAST(:lo AS BIGINT) + (b * CAST(:span AS BIGINT) + :n - 1) / :n AS s0,
           CAST(:lo AS BIGINT) + ((b + 1) * CAST(:span AS BIGINT) + :n - 1) / :n AS s1
    FROM buckets
), agg AS (
    SELECT b,
      (SELECT MIN(value) FROM metric_points
       WHERE run_id = :run_id AND name = :name AND step >= s0 AND step < s1) AS vmin,
      (SELECT MAX(value) FROM metric_points
       WHERE run_id = :run_id AND name = :name AND step >= s0 AND step < s1) AS vmax,
      (SELECT MAX(step) FROM metric_points
       WHERE run_id = :run_id AND name = :name AND step >= s0 AND step < s1) AS last_step
    FROM bounds
)
SELECT agg.b, agg.vmin, agg.vmax, m.step, m.seq, m.time, m.value
FROM agg JOIN metric_points m
  ON m.run_id = :run_id AND m.name = :name AND m.step = agg.last_step
ORDER BY agg.b, m.seq
""")

_RAW_SQL = text("""
SELECT step, time, value FROM metric_points
WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi
ORDER BY step, seq LIMIT :limit
""")

_RANGE_SQL = text("""
SELECT (SELECT MIN(step) FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi),
       (SELECT MAX(step) FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi)
""")

STEP_MAX = 2**62


def downsample_minmax(session: Session, run_id: str, name: str, start: int | None, end: int | None,
                      buckets: int) -> tuple[dict[str, list], bool]:
    """The series `name` of `run_id` over [start, end] in at most `buckets` points.

    Returns ({"step", "time", "min", "max", "last"}, downsampled). Raw points come back unchanged
    (min = max = last = value) when there are no more than `buckets` of them.
    """
    lo = 0 if start is None else max(0, start)
    hi = STEP_MAX if end is None else end
    params = {"run_id": run_id, "name": name, "lo": lo, "hi": hi}
    raw = session.execute(_RAW_SQL, {**params, "limit": buckets + 1}).all()
    if len(raw) <= buckets:
        steps, times, values = ([r[i] for r in raw] for i in range(3))
        return {"step": steps, "time": times, "min": values, "max": values, "last": values}, False
    lo, hi = session.execute(_RANGE_SQL, params).one()
    span = hi - lo + 1
    levels = levels_for(span, buckets)
    statement = text(buckets_sql(levels, session.get_bind().dialect.name)) if levels else _BUCKETS_SQL
    rows = session.execute(statement, {**params, "lo": lo, "hi": hi, "n": buckets, "span": span}).all()
    out: dict[str, list] = {"step": [], "time": [], "min": [], "max": [], "last": []}
    previous_bucket = None
    for b, vmin, vmax, step, _seq, t, value in rows:
        if b == previous_bucket:  # same last step, higher seq: replaces the earlier row
            out["time"][-1], out["last"][-1] = t, value
            continue
        previous_bucket = b
        for key, v in zip(("step", "time", "min", "max", "last"), (step, t, vmin, vmax, value)):
            out[key].append(v)
    return out, True


def series(session: Session, run_id: str, names: list[str], start: int | None, end: int | None,
           buckets: int) -> dict[str, Any]:
    result, any_downsampled = {}, False
    for name in names:
        result[name], downsampled = downsample_minmax(session, run_id, name, start, end, buckets)
        any_downsampled |= downsampled
    return {"series": result, "downsampled": any_downsampled}


def events_of_kind(session: Session, run_id: str, kind: str, limit: int | None = None,
                   newest: bool = False) -> list[dict[str, Any]]:
    query = select(Event.payload).where(Event.run_id == run_id, Event.kind == kind)
    query = query.order_by(Event.seq.desc() if newest else Event.seq)  # type: ignore[union-attr]
    if limit is not None:
        query = query.limit(limit)
    rows = list(session.exec(query))
    return rows[::-1] if newest else rows


def last_status_event(session: Session, run_id: str) -> dict[str, Any] | None:
    found = events_of_kind(session, run_id, "status", 1, newest=True)
    return found[0] if found else None


def evals(session: Session, run_id: str) -> list[dict[str, Any]]:
    return [
        {"step": ev.get("step"), "time": ev.get("time"), "values": ev.get("values", {}),
         "batch_size": ev.get("batch_size")}
        for ev in events_of_kind(session, run_id, "eval")
    ]


def matrix_steps(session: Session, run_id: str) -> list[dict[str, Any]]:
    rows = session.exec(
        select(Event.step, Event.seq).where(Event.run_id == run_id, Event.kind == "matrix").order_by(Event.seq)
    ).all()
    return [{"step": step, "seq": seq} for step, seq in rows]


def matrix_at(session: Session, run_id: str, step: int) -> dict[str, Any] | None:
    """The last `matrix` event recorded at `step` (a resumed run may record a step twice)."""
    return session.exec(
        select(Event.payload)
        .where(Event.run_id == run_id, Event.kind == "matrix", Event.step == step)
        .order_by(Event.seq.desc())  # type: ignore[union-attr]
        .limit(1)
    ).first()


def events_after(session: Session, run_id: str, after: int, limit: int) -> list[dict[str, Any]]:
    return list(session.exec(
        select(Event.payload).where(Event.run_id == run_id, Event.seq > after).order_by(Event.seq).limit(limit)
    ))
