"""Multi-resolution rollups of the metric series, kept in step with metric_points at ingest.

Level k (1..LEVELS) splits a series' steps into aligned blocks of BLOCK ** k steps and keeps each block's
min, max and last step (table metric_rollups). A chart bucket [s0, s1) is then the exact union of a few
aligned ranges: raw points at its ragged edges, 16-step blocks inside those, 256-step blocks inside those ...
so `series.series_buckets` reads ~40 rows per bucket instead of every point, with the same answer.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

from sqlalchemy import text
from sqlmodel import Session

from backend.store.bulk import placeholders

BLOCK = 16  # fan-out between levels: a level-k block holds BLOCK ** k steps
LEVELS = 5  # up to ~1M-step blocks; coarser levels would only help series of more than 1e9 steps
ROLLUP_COLUMNS = ("run_id", "name", "level", "block_start", "vmin", "vmax", "last_step")


def record_points(session: Session, run_id: str, points: Iterable[tuple[str, int, float]]) -> None:
    """Fold freshly stored (name, step, value) points of `run_id` into every level's blocks (one upsert
    per touched block, so a batch of thousands of points costs a few hundred rows)."""
    blocks: dict[tuple[str, int, int], list] = {}
    for name, step, value in points:  # level 1 from the points (inlined: ~10 per block on the hot path)
        key = (name, 1, step - step % BLOCK)
        agg = blocks.get(key)
        if agg is None:
            blocks[key] = [value, value, step]
            continue
        if value < agg[0]:
            agg[0] = value
        if value > agg[1]:
            agg[1] = value
        if step > agg[2]:
            agg[2] = step
    level_blocks = list(blocks.items())
    for level in range(2, LEVELS + 1):  # each coarser level from the one below
        size = BLOCK ** level
        coarser: dict[tuple[str, int, int], list] = {}
        for (name, _, start), (vmin, vmax, last) in level_blocks:
            _fold(coarser, (name, level, start - start % size), vmin, vmax, last)
        blocks.update(coarser)
        level_blocks = list(coarser.items())
    if not blocks:
        return
    conn = session.connection()
    least, greatest = ("min", "max") if conn.dialect.name == "sqlite" else ("LEAST", "GREATEST")
    conn.exec_driver_sql(
        f"INSERT INTO metric_rollups ({', '.join(ROLLUP_COLUMNS)}) VALUES ({placeholders(conn, 7)}) "
        "ON CONFLICT (run_id, name, level, block_start) DO UPDATE SET "
        f"vmin = {least}(metric_rollups.vmin, excluded.vmin), vmax = {greatest}(metric_rollups.vmax, excluded.vmax), "
        f"last_step = {greatest}(metric_rollups.last_step, excluded.last_step)",
        [(run_id, name, level, start, vmin, vmax, last) for (name, level, start), (vmin, vmax, last) in blocks.items()])


def _fold(blocks: dict[tuple[str, int, int], list], key: tuple[str, int, int], vmin: float, vmax: float,
          last: int) -> None:
    agg = blocks.get(key)
    if agg is None:
        blocks[key] = [vmin, vmax, last]
    else:
        agg[0], agg[1], agg[2] = min(agg[0], vmin), max(agg[1], vmax), max(agg[2], last)


def rebuild_after(session: Session, run_id: str, step: int) -> None:
    """Recompute the blocks of every series of `run_id` that hold steps > `step` (-1: all) from what
    metric_points holds now; after a resumed run's superseded points were deleted, or after a bulk load.

    Level 1 is rebuilt from the points, level k from level k-1's blocks, so a resume near step S reads a
    few dozen rows per level, not the ~BLOCK ** LEVELS points of the top block around S.
    """
    names = set(session.execute(text("SELECT DISTINCT name FROM metric_rollups WHERE run_id = :run_id"),
                                {"run_id": run_id}).scalars())
    if step < 0:
        names |= set(session.execute(text("SELECT DISTINCT name FROM metric_points WHERE run_id = :run_id"),
                                     {"run_id": run_id}).scalars())
    for name in sorted(names):
        for level in range(1, LEVELS + 1):
            _rebuild_level(session, run_id, name, level, max(0, step + 1))


def _rebuild_level(session: Session, run_id: str, name: str, level: int, from_step: int) -> None:
    size = BLOCK ** level
    params = {"run_id": run_id, "name": name, "level": level, "first": from_step - from_step % size}
    series = "run_id = :run_id AND name = :name"
    session.execute(text(f"DELETE FROM metric_rollups WHERE {series} AND level = :level AND block_start >= :first"),
                    params)
    if level == 1:
        source = (f"SELECT run_id, name, :level, (step / {size}) * {size}, MIN(value), MAX(value), MAX(step) "
                  f"FROM metric_points WHERE {series} AND step >= :first GROUP BY run_id, name, step / {size}")
    else:
        source = (f"SELECT run_id, name, :level, (block_start / {size}) * {size}, MIN(vmin), MAX(vmax), "
                  f"MAX(last_step) FROM metric_rollups WHERE {series} AND level = :level - 1 "
                  f"AND block_start >= :first GROUP BY run_id, name, block_start / {size}")
    session.execute(text(f"INSERT INTO metric_rollups ({', '.join(ROLLUP_COLUMNS)}) {source}"), params)


@lru_cache(maxsize=4 * (LEVELS + 1))
def buckets_sql(levels: int, dialect: str) -> str:
    """The statement of `downsample_minmax` reading rollup levels 1..`levels` (>= 1) on `dialect`.

    Bucket b is [s0, s1) as in the plain query. u_k/d_k are s0 rounded up and s1 rounded down to level k's
    blocks; level k covers [u_k, d_k) minus what level k+1 covers, i.e. at most two ranges per level.
    """
    cuts = ["s0 AS u0", "s1 AS d0"]
    for k in range(1, levels + 1):
        size = BLOCK ** k
        cuts += [f"((s0 + {size - 1}) / {size}) * {size} AS u{k}", f"(s1 / {size}) * {size} AS d{k}"]
    ranges = []
    for k in range(levels + 1):
        if k < levels:
            inner = f"u{k + 1} < d{k + 1}"
            pieces = [(f"u{k}", f"CASE WHEN {inner} THEN u{k + 1} ELSE d{k} END"),
                      (f"CASE WHEN {inner} THEN d{k + 1} ELSE d{k} END", f"d{k}")]
        else:
            pieces = [(f"u{k}", f"d{k}")]
        ranges += [f"SELECT b, {k} AS lvl, {a} AS a, {e} AS e FROM cuts WHERE {a} < {e}" for a, e in pieces]
    return f"""
WITH RECURSIVE buckets(b) AS (
    SELECT 0 UNION ALL SELECT b + 1 FROM buckets WHERE b + 1 < :n
), cuts AS (
    SELECT b, s0, s1, {', '.join(cuts)} FROM (
        SELECT b, CAST(:lo AS BIGINT) + (b * CAST(:span AS BIGINT) + :n - 1) / :n AS s0,
                  CAST(:lo AS BIGINT) + ((b + 1) * CAST(:span AS BIGINT) + :n - 1) / :n AS s1
        FROM buckets) AS bounds
), ranges AS MATERIALIZED (
    {' UNION ALL '.join(ranges)}
), parts AS (
    {_parts(dialect)}
), agg AS (
    SELECT b, MIN(vmin) AS vmin, MAX(vmax) AS vmax, MAX(last_step) AS last_step FROM parts GROUP BY b
)
SELECT agg.b, agg.vmin, agg.vmax, m.step, m.seq, m.time, m.value
FROM agg CROSS JOIN metric_points m
WHERE m.run_id = :run_id AND m.name = :name AND m.step = agg.last_step
ORDER BY agg.b, m.seq
"""


_RAW_RANGE = "metric_points m WHERE m.run_id = :run_id AND m.name = :name AND m.step >= r.a AND m.step < r.e"
_ROLLUP_RANGE = ("metric_rollups t WHERE t.run_id = :run_id AND t.name = :name AND t.level = r.lvl "
                 "AND t.block_start >= r.a AND t.block_start < r.e")


def _parts(dialect: str) -> str:
    """min, max and last step of each range: PostgreSQL aggregates each range in one LATERAL index scan;
    SQLite (no LATERAL) joins the ranges to the index and groups by bucket."""
    if dialect == "postgresql":
        return f"""SELECT r.b, x.vmin, x.vmax, x.last_step FROM ranges r CROSS JOIN LATERAL (
        SELECT MIN(m.value) AS vmin, MAX(m.value) AS vmax, MAX(m.step) AS last_step FROM {_RAW_RANGE}) x
    WHERE r.lvl = 0
    UNION ALL
    SELECT r.b, x.vmin, x.vmax, x.last_step FROM ranges r CROSS JOIN LATERAL (
        SELECT MIN(t.vmin) AS vmin, MAX(t.vmax) AS vmax, MAX(t.last_step) AS last_step FROM {_ROLLUP_RANGE}) x
    WHERE r.lvl > 0"""
    raw, rollup = _RAW_RANGE.replace(" WHERE ", " ON "), _ROLLUP_RANGE.replace(" WHERE ", " ON ")
    return f"""SELECT r.b, MIN(m.value) AS vmin, MAX(m.value) AS vmax, MAX(m.step) AS last_step
    FROM ranges r CROSS JOIN {raw}
    WHERE r.lvl = 0 GROUP BY r.b
    UNION ALL
    SELECT r.b, MIN(t.vmin), MAX(t.vmax), MAX(t.last_step) FROM ranges r CROSS JOIN {rollup}
    WHERE r.lvl > 0 GROUP BY r.b"""


def levels_for(span: int, buckets: int) -> int:
    """The coarsest level worth reading: its blocks are no wider than a bucket."""
    width = span // buckets
    level = 0
    while level < LEVELS and BLOCK ** (level + 1) <= width:
        level += 1
    return level
