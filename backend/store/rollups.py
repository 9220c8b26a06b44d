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

from backend.store.bulk import insert_rows

BLOCK = 16  # fan-out between levels: a level-k block holds BLOCK ** k steps
LEVELS = 5  # up to ~1M-step blocks; coarser levels would only help series of more than 1e9 steps
ROLLUP_COLUMNS = ("run_id", "name", "level", "block_start", "vmin", "vmax", "last_step")

Blocks = dict[tuple[str, int, int], list]  # (name, level, block start) -> [min, max, last step]


def blocks_of(points: Iterable[tuple[str, int, float]]) -> Blocks:
    """The blocks of every level that (name, step, value) points fall in, with their min, max and last step
    over those points alone (pure Python: ingest makes them outside the single writer)."""
    blocks: Blocks = {}
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
        coarser: Blocks = {}
        for (name, _, start), (vmin, vmax, last) in level_blocks:
            _fold(coarser, (name, level, start - start % size), vmin, vmax, last)
        blocks.update(coarser)
        level_blocks = list(coarser.items())
    return blocks


def upsert_blocks(session: Session, run_id: str, blocks: Blocks) -> None:
    """Widen the stored blocks of `run_id` by `blocks` (one upsert per block, so a batch of thousands of
    points costs a few hundred rows). Folding a stored point in again changes nothing."""
    if not blocks:
        return
    least, greatest = ("min", "max") if session.connection().dialect.name == "sqlite" else ("LEAST", "GREATEST")
    insert_rows(session, "metric_rollups", ROLLUP_COLUMNS, [
        (run_id, name, level, start, vmin, vmax, last) for (name, level, start), (vmin, vmax, last) in blocks.items()
    ], "ON CONFLICT (run_id, name, level, block_start) DO UPDATE SET "
       f"vmin = {least}(metric_rollups.vmin, excluded.vmin), vmax = {greatest}(metric_rollups.vmax, excluded.vmax), "
       f"last_step = {greatest}(metric_rollups.last_step, excluded.last_step)")


def _fold(blocks: Blocks, key: tuple[str, int, int], vmin: float, vmax: float,
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
    """The statement of `series.series_buckets` reading rollup levels 1..`levels` (>= 1) on `dialect`.

    Bucket b is [s0, s1) as in the plain query; the n + 1 "edges" s are the buckets' starts and hi + 1.
    A level-`levels` block inside one bucket is read as it is, in one range scan of the window (fewer than
    16 rows per bucket, as a block is no wider than a bucket). A block that an edge cuts is replaced by its
    16 children one level down: those left of the edge go to the bucket before it, those right of it to the
    bucket after it, and the child the edge cuts in turn is replaced by its children ... down to the raw
    points. That is one index seek per edge and level: an edge cuts one block per level.
    """
    size = BLOCK ** levels
    parts = [f"""SELECT {_bucket_of('t.block_start')} AS b, t.vmin, t.vmax, t.last_step FROM metric_rollups t
    WHERE t.run_id = :run_id AND t.name = :name AND t.level = {levels} AND t.block_start >= :lo
      AND t.block_start <= :hi - {size - 1} AND {_bucket_of('t.block_start')} = {_bucket_of(f't.block_start + {size - 1}')}"""]
    parts += [_cut_children(k, dialect) for k in range(levels - 1, -1, -1)]
    union = "\n    UNION ALL\n    ".join(parts)
    return f"""
WITH RECURSIVE edge_numbers(b) AS (
    SELECT 0 UNION ALL SELECT b + 1 FROM edge_numbers WHERE b < :n
), edges AS MATERIALIZED (
    SELECT b, CAST(:lo AS BIGINT) + (b * CAST(:span AS BIGINT) + :n - 1) / :n AS s FROM edge_numbers
), parts(b, vmin, vmax, last_step) AS (
    {union}
), agg AS (
    SELECT b, MIN(vmin) AS vmin, MAX(vmax) AS vmax, MAX(last_step) AS last_step FROM parts GROUP BY b
)
{last_points(dialect)}
"""


def last_points(dialect: str) -> str:
    """The final SELECT of a buckets statement: each bucket of `agg` (b, vmin, vmax, last_step) with the
    point at its last step, ordered by bucket then seq. On PostgreSQL one LATERAL seek per bucket for the
    latest seq (a plain join there, planned before the table has statistics, scans the whole series)."""
    if dialect == "postgresql":
        return """SELECT agg.b, agg.vmin, agg.vmax, agg.last_step, m.seq, m.time, m.value FROM agg CROSS JOIN LATERAL (
    SELECT m.seq, m.time, m.value FROM metric_points m
    WHERE m.run_id = :run_id AND m.name = :name AND m.step = agg.last_step ORDER BY m.seq DESC LIMIT 1) AS m
ORDER BY agg.b"""
    return """SELECT agg.b, agg.vmin, agg.vmax, m.step, m.seq, m.time, m.value
FROM agg CROSS JOIN metric_points m
WHERE m.run_id = :run_id AND m.name = :name AND m.step = agg.last_step
ORDER BY agg.b, m.seq"""


def _bucket_of(step: str) -> str:
    """The bucket of a step in the window, as the plain query numbers them: floor((step - lo) * n / span)."""
    return f"({step} - :lo) * :n / :span"


def _cut_children(level: int, dialect: str) -> str:
    """(bucket, min, max, last step) of the level-`level` blocks (level 0: the points) inside the blocks one
    level up that an edge cuts, except the child the edge cuts too. PostgreSQL aggregates both sides of each
    edge in one LATERAL index scan (a plain join there gets poor row estimates); SQLite joins and tags."""
    size, parent = BLOCK ** level, BLOCK ** (level + 1)
    if level:
        rows, start, vmin, vmax, last = "metric_rollups t", "t.block_start", "t.vmin", "t.vmax", "t.last_step"
        series = f"t.run_id = :run_id AND t.name = :name AND t.level = {level}"
    else:
        rows, start, vmin, vmax, last = "metric_points t", "t.step", "t.value", "t.value", "t.step"
        series = "t.run_id = :run_id AND t.name = :name"
    # Children in the window: start >= lo and start + size - 1 <= hi; one bound each way keeps the seek narrow.
    cut = f"""(SELECT b, s, CASE WHEN c < :lo THEN :lo ELSE c END AS a,
                CASE WHEN c + {parent} < :hi - {size - 2} THEN c + {parent} ELSE :hi - {size - 2} END AS e
          FROM (SELECT b, s, s - s % {parent} AS c FROM edges WHERE s % {parent} <> 0) AS cut) AS r"""
    scan = f"{series} AND {start} >= r.a AND {start} < r.e AND ({start} + {size} <= r.s OR {start} >= r.s)"
    if dialect != "postgresql":
        return f"""SELECT CASE WHEN {start} < r.s THEN r.b - 1 ELSE r.b END, {vmin}, {vmax}, {last}
    FROM {cut} JOIN {rows} ON {scan}"""
    side = {"l": f"FILTER (WHERE {start} < r.s)", "r": f"FILTER (WHERE {start} >= r.s)"}
    aggregates = ", ".join(f"MIN({vmin}) {f} AS {k}min, MAX({vmax}) {f} AS {k}max, MAX({last}) {f} AS {k}last"
                           for k, f in side.items())
    return f"""SELECT x.b, x.vmin, x.vmax, x.last_step FROM {cut}
    CROSS JOIN LATERAL (SELECT {aggregates} FROM {rows} WHERE {scan}) AS y
    CROSS JOIN LATERAL (VALUES (r.b - 1, y.lmin, y.lmax, y.llast), (r.b, y.rmin, y.rmax, y.rlast)) AS x(b, vmin, vmax, last_step)"""


def levels_for(span: int, buckets: int) -> int:
    """The coarsest level worth reading: its blocks are no wider than a bucket."""
    width = span // buckets
    level = 0
    while level < LEVELS and BLOCK ** (level + 1) <= width:
        level += 1
    return level
