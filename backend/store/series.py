"""The metric series (table metric_points, with its rollups kept in step): storing points and reading ranges.

`series_buckets` groups a series into at most N step buckets in one SQL statement, keeping each bucket's
min, max and last point, so a 1,000,000-point loss curve becomes ~1000 points without hiding spikes. Buckets
wider than 16 steps read the series' rollups (rollups.py) plus the raw points at their edges.
`series_rows_after` pages through every row of a series by its primary key (the CSV export).
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlalchemy import delete, func, select, text
from sqlmodel import Session

from backend.models import MetricPoint, NonFinitePoint
from backend.store import rollups
from backend.store.bulk import insert_new

POINT_COLUMNS = ("run_id", "name", "step", "seq", "time", "value")
NONFINITE_COLUMNS = ("run_id", "name", "step", "seq", "time")

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


# A series' null (NaN or inf) values within [lo, hi]: how many, the first's and the last's step and time. One
# statement per series: an empty primary-key probe for the usual series that has none, else a range count.
_NONFINITE_SQL = text("""
WITH nf AS (SELECT step, seq, time FROM metric_nonfinite
            WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi)
SELECT (SELECT COUNT(*) FROM nf), head.step, head.time, tail.step, tail.time
FROM (SELECT step, time FROM nf ORDER BY step, seq LIMIT 1) AS head,
     (SELECT step, time FROM nf ORDER BY step DESC, seq DESC LIMIT 1) AS tail
""")


# An export's keyset pages: the rows of a series after (step, seq), in primary-key order, one table at a time.
# (As one UNION ALL, PostgreSQL's planner sorted the whole rest of the series for every page: 10x slower.)
_POINTS_AFTER_SQL = text("""
SELECT step, seq, time, value FROM metric_points
WHERE run_id = :run_id AND name = :name AND (step, seq) > (:step, :seq)
ORDER BY step, seq LIMIT :limit
""")

_NONFINITE_AFTER_SQL = text("""
SELECT step, seq, time, NULL FROM metric_nonfinite
WHERE run_id = :run_id AND name = :name AND (step, seq) > (:step, :seq)
ORDER BY step, seq LIMIT :limit
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


def add_nonfinite(session: Session, rows: list[tuple[str, str, int, int, float]]) -> None:
    """Store (run_id, name, step, seq, time) null series values (NaN or inf where measured) not stored yet."""
    if rows:
        insert_new(session, "metric_nonfinite", NONFINITE_COLUMNS, rows)


def drop_points_after(session: Session, run_id: str, step: int, before_seq: int) -> int:
    """Delete the run's points (and null values) past `step` that were logged before event `before_seq` (a
    resume from a checkpoint at `step` supersedes them) and rebuild the rollups they were in; returns how many
    points went."""
    session.execute(delete(NonFinitePoint).where(
        NonFinitePoint.run_id == run_id, NonFinitePoint.step > step, NonFinitePoint.seq < before_seq))
    dropped = session.execute(delete(MetricPoint).where(
        MetricPoint.run_id == run_id, MetricPoint.step > step, MetricPoint.seq < before_seq)).rowcount
    if dropped:
        rollups.rebuild_after(session, run_id, step)
    return dropped


def series_points(session: Session, run_id: str, name: str, lo: int, hi: int, limit: int) -> Sequence[Any]:
    """Up to `limit` raw (step, time, value) rows of a series with lo <= step <= hi, ordered by step then seq."""
    return session.execute(_RAW_SQL, {"run_id": run_id, "name": name, "lo": lo, "hi": hi, "limit": limit}).all()


def series_rows_after(session: Session, run_id: str, name: str, after: tuple[int, int],
                      limit: int) -> Sequence[Any]:
    """The first `limit` (step, seq, time, value) rows of a series past (step, seq) `after`, its points and its
    null values (value None) together, ordered by step then seq: one keyset page of a whole-series read."""
    params = {"run_id": run_id, "name": name, "step": after[0], "seq": after[1], "limit": limit}
    points = session.execute(_POINTS_AFTER_SQL, params).all()
    nonfinite = session.execute(_NONFINITE_AFTER_SQL, params).all()
    if not nonfinite:  # the usual series: no merge
        return points
    return sorted([*points, *nonfinite], key=lambda row: (row[0], row[1]))[:limit]


def series_step_range(session: Session, run_id: str, name: str, lo: int, hi: int) -> tuple[int | None, int | None]:
    """The first and last step a series has within [lo, hi] (None, None when it has none)."""
    first, last = session.execute(_RANGE_SQL, {"run_id": run_id, "name": name, "lo": lo, "hi": hi}).one()
    return first, last


def value_ranges(session: Session, run_id: str, names: list[str]) -> dict[str, tuple[float, float]]:
    """{name: (min, max)} of the stored points of the run's series `names` (those with points left)."""
    if not names:
        return {}
    rows = session.execute(select(MetricPoint.name, func.min(MetricPoint.value), func.max(MetricPoint.value))
                           .where(MetricPoint.run_id == run_id, MetricPoint.name.in_(names))
                           .group_by(MetricPoint.name)).all()
    return {name: (vmin, vmax) for name, vmin, vmax in rows}


def series_nonfinite(session: Session, run_id: str, name: str, lo: int, hi: int) -> dict[str, Any] | None:
    """{"count", "first_step", "first_time", "last_step", "last_time"} of a series' null (NaN or inf) values
    with lo <= step <= hi, or None when it has none there."""
    row = session.execute(_NONFINITE_SQL, {"run_id": run_id, "name": name, "lo": lo, "hi": hi}).first()
    return None if row is None else dict(zip(("count", "first_step", "first_time", "last_step", "last_time"), row))


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
