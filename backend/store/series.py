"""The metric series (table metric_points, with its rollups kept in step): storing points and reading ranges.

`series_buckets` groups a series into at most N step buckets in one SQL statement, keeping each bucket's
min, max and last point, so a 1,000,000-point loss curve becomes ~1000 points without hiding spikes. Buckets
wider than 16 steps read the series' rollups (rollups.py) plus the raw points at their edges.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import delete, text
from sqlmodel import Session

from backend.models import MetricPoint
from backend.store import rollups
from backend.store.bulk import insert_new

POINT_COLUMNS = ("run_id", "name", "step", "seq", "time", "value")

# One statement per series. Bucket b holds the steps with floor((step - lo) * n / span) == b, i.e. the step
# range [lo + ceil(b * span / n), lo + ceil((b + 1) * span / n)). Each bucket's min and max come from a range
# scan of the primary key, its last step from one index seek; the join back on (run_id, name, last_step)
# fetches that point's value and time (ties at one step, which a resumed run repeats, go to the highest seq;
# rollups.last_points).
# This is the GROUP BY-bucket aggregation without the sort SQLite puts behind a computed GROUP BY key; it
# reads every point, so it serves buckets narrower than a rollup block (wider ones: rollups.buckets_sql).
_BUCKETS_SQL = """
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
"""

_RAW_SQL = text("""
SELECT step, time, value FROM metric_points
WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi
ORDER BY step, seq LIMIT :limit
""")

_RANGE_SQL = text("""
SELECT (SELECT MIN(step) FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi),
       (SELECT MAX(step) FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi)
""")


def add_points(session: Session, points: list[tuple[str, str, int, int, float, float]],
               blocks: rollups.Blocks | None = None) -> None:
    """Store (run_id, name, step, seq, time, value) points not stored yet and fold them into the rollups.
    All points are of one run; `blocks`: their rollups.blocks_of, when the caller made them already."""
    if not points:
        return
    insert_new(session, "metric_points", POINT_COLUMNS, points)
    if blocks is None:
        blocks = rollups.blocks_of((p[1], p[2], p[5]) for p in points)
    rollups.upsert_blocks(session, points[0][0], blocks)


def drop_points_after(session: Session, run_id: str, step: int, before_seq: int) -> int:
    """Delete the run's points past `step` that were logged before event `before_seq` (a resume from a
    checkpoint at `step` supersedes them) and rebuild the rollups they were in; returns how many went."""
    dropped = session.execute(delete(MetricPoint).where(
        MetricPoint.run_id == run_id, MetricPoint.step > step, MetricPoint.seq < before_seq)).rowcount
    if dropped:
        rollups.rebuild_after(session, run_id, step)
    return dropped


def series_points(session: Session, run_id: str, name: str, lo: int, hi: int, limit: int) -> Sequence[Any]:
    """Up to `limit` raw (step, time, value) rows of a series with lo <= step <= hi, ordered by step then seq."""
    return session.execute(_RAW_SQL, {"run_id": run_id, "name": name, "lo": lo, "hi": hi, "limit": limit}).all()


def series_step_range(session: Session, run_id: str, name: str, lo: int, hi: int) -> tuple[int | None, int | None]:
    """The first and last step a series has within [lo, hi] (None, None when it has none)."""
    first, last = session.execute(_RANGE_SQL, {"run_id": run_id, "name": name, "lo": lo, "hi": hi}).one()
    return first, last


def series_buckets(session: Session, run_id: str, name: str, lo: int, hi: int, buckets: int) -> Sequence[Any]:
    """(bucket, min, max, last step, its seq, time, value) rows of a series' steps lo..hi (both stored)
    split into `buckets` buckets, ordered by bucket then seq; where the last step was logged more than once,
    the bucket's last row is its latest (SQLite returns a row for each, PostgreSQL only that one)."""
    span = hi - lo + 1
    levels = rollups.levels_for(span, buckets)
    dialect = session.get_bind().dialect.name  # (db.make_engine turns PostgreSQL's JIT off for this query)
    statement = rollups.buckets_sql(levels, dialect) if levels else _BUCKETS_SQL + rollups.last_points(dialect)
    params = {"run_id": run_id, "name": name, "lo": lo, "hi": hi, "n": buckets, "span": span}
    return session.execute(text(statement), params).all()
