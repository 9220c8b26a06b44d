"""Latency of a downsampled series (GET /api/runs/{id}/series, 1000 min/max/last buckets), before and after.

    python bench/bench_series.py                         # SQLite, then a throwaway PostgreSQL if installed
    python bench/bench_series.py --points 1000000 --series 20 --other-points 50000 --reps 15
    python bench/bench_series.py --cache /tmp/cliplab-bench-series   # build each database once, reuse it

One run holds `--series` series: `loss` with `--points` points (a spike every 99,991 steps) and the others
with `--other-points` each, bulk-loaded and rolled up as ingest would have. Each query (the whole range and
a 10 % zoom) is timed over --reps repetitions for: a naive GROUP BY on the computed bucket, the previous
query (three subqueries per bucket, kept here as the baseline), and the current `downsample_minmax`, all on
the same database in one process; their answers must be equal. Prints p50/p95 and the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backend.db import make_engine, migrate  # noqa: E402
from backend.services.metrics import downsample_minmax  # noqa: E402
from backend.store import rollups  # noqa: E402
from bench.throwaway_postgres import throwaway_postgres  # noqa: E402

# The query before the rollups: per bucket, MIN and MAX and MAX(step) over every point of the bucket.
PREVIOUS_SQL = text("""
WITH RECURSIVE buckets(b) AS (
    SELECT 0 UNION ALL SELECT b + 1 FROM buckets WHERE b + 1 < :n
), bounds AS (
    SELECT b, CAST(:lo AS BIGINT) + (b * CAST(:span AS BIGINT) + :n - 1) / :n AS s0,
              CAST(:lo AS BIGINT) + ((b + 1) * CAST(:span AS BIGINT) + :n - 1) / :n AS s1
    FROM buckets
), agg AS (
    SELECT b,
      (SELECT MIN(value) FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= s0 AND step < s1) AS vmin,
      (SELECT MAX(value) FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= s0 AND step < s1) AS vmax,
      (SELECT MAX(step) FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= s0 AND step < s1) AS last_step
    FROM bounds
)
SELECT agg.b, agg.vmin, agg.vmax, m.step, m.seq, m.time, m.value
FROM agg JOIN metric_points m ON m.run_id = :run_id AND m.name = :name AND m.step = agg.last_step
ORDER BY agg.b, m.seq
""")

# The naive form: one GROUP BY on the computed bucket number over the points in range.
NAIVE_SQL = text("""
WITH agg AS (
    SELECT (step - :lo) * :n / :span AS b, MIN(value) AS vmin, MAX(value) AS vmax, MAX(step) AS last_step
    FROM metric_points WHERE run_id = :run_id AND name = :name AND step >= :lo AND step <= :hi
    GROUP BY (step - :lo) * :n / :span
)
SELECT agg.b, agg.vmin, agg.vmax, m.step, m.seq, m.time, m.value
FROM agg JOIN metric_points m ON m.run_id = :run_id AND m.name = :name AND m.step = agg.last_step
ORDER BY agg.b, m.seq
""")

RUN_ID = "bench-series"


def load(engine, points: int, series: int, other_points: int) -> None:
    with engine.connect() as conn:
        if conn.execute(text("SELECT COUNT(*) FROM runs WHERE id = :r"), {"r": RUN_ID}).scalar():
            print("  (database from the cache)")
            return
    t0 = time.perf_counter()
    with engine.begin() as conn:
        names = ["loss", *(f"other_{i:02d}" for i in range(1, series))]
        conn.execute(text("INSERT INTO runs (id, name, status, tags, config, gpus, nproc, devices, step, latest, best, "
                          "metric_names, model, dataset, created_at, run_dir, last_seq, resume, stop_requested) "
                          "VALUES (:r, 'bench', 'finished', '[]', '{}', 0, 1, '[]', 0, '{}', '{}', :names, '', '', 0, "
                          "'', -1, false, false)"), {"r": RUN_ID, "names": json.dumps(names)})
        raw = conn.connection.driver_connection
        mark = "?" if engine.dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO metric_points VALUES ({', '.join([mark] * 6)})"
        for i in range(series):
            name, n = ("loss", points) if i == 0 else (f"other_{i:02d}", other_points)
            for lo in range(0, n, 100_000):
                rows = [(RUN_ID, name, s, s, 1e9 + s, 5.0 / (1 + s / 1000) + (50.0 if s % 99_991 == 0 else 0.0))
                        for s in range(lo, min(n, lo + 100_000))]
                raw.cursor().executemany(sql, rows)
    print(f"  loaded {points:,} + {series - 1} x {other_points:,} points in {time.perf_counter() - t0:.1f} s", end="")
    t0 = time.perf_counter()
    with Session(engine) as session:
        rollups.rebuild_after(session, RUN_ID, -1)
        session.commit()
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:  # what autovacuum does after a bulk load: fresh planner statistics
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    print(f", rolled up in {time.perf_counter() - t0:.1f} s")


def timed(fn, reps: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, result


def p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def bench_database(url: str, args: argparse.Namespace) -> None:
    engine = make_engine(url)
    migrate(engine)
    print(f"{engine.dialect.name}:")
    load(engine, args.points, args.series, args.other_points)
    windows = {"whole range": (0, args.points - 1), "10% zoom": (args.points // 3, args.points // 3 + args.points // 10 - 1)}
    for label, (lo, hi) in windows.items():
        params = {"run_id": RUN_ID, "name": "loss", "lo": lo, "hi": hi, "n": 1000, "span": hi - lo + 1}
        with Session(engine) as session:
            naive, naive_rows = timed(lambda: session.execute(NAIVE_SQL, params).all(), args.reps)
            previous, previous_rows = timed(lambda: session.execute(PREVIOUS_SQL, params).all(), args.reps)
            current, (series, _) = timed(
                lambda: downsample_minmax(session, RUN_ID, "loss", lo, hi, 1000), args.reps)
        last_of = {}
        for b, _vmin, _vmax, step, _seq, _t, value in previous_rows:
            last_of[b] = (step, value)
        assert [s for s, _ in last_of.values()] == series["step"] and [v for _, v in last_of.values()] == series["last"]
        assert [r[1] for r in previous_rows if True][:1] == series["min"][:1]
        assert naive_rows == previous_rows, "the naive and previous queries disagree"
        print(f"  {label:11s} p50/p95 ms: naive {p(naive, .5):6.1f}/{p(naive, .95):6.1f}  "
              f"previous {p(previous, .5):6.1f}/{p(previous, .95):6.1f}  "
              f"now {p(current, .5):6.1f}/{p(current, .95):6.1f}   "
              f"speed-up p95: {p(naive, .95) / p(current, .95):5.1f}x naive, {p(previous, .95) / p(current, .95):5.1f}x previous")
    engine.dispose()


def database_arguments(parser: argparse.ArgumentParser, series: int, reps: int) -> None:
    """The flags of a bench over `load`'s run (one long series, `series` series in all) on SQLite and PostgreSQL."""
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=series)
    parser.add_argument("--other-points", type=int, default=50_000)
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--cache", type=Path, help="keep the databases in this folder and reuse them "
                        "(one per --points/--series/--other-points; rebuilt when missing)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    database_arguments(parser, series=20, reps=15)
    args = parser.parse_args()
    shape = f"{args.points}-{args.series}-{args.other_points}"
    with tempfile.TemporaryDirectory(prefix="cliplab-bench-") as tmp:
        folder = Path(tmp) if args.cache is None else args.cache
        folder.mkdir(parents=True, exist_ok=True)
        bench_database(f"sqlite:///{folder}/series-{shape}.db", args)
    if args.no_postgres:
        return
    with throwaway_postgres(None if args.cache is None else args.cache / f"pg-{shape}") as url:
        if url is None:
            print("postgresql: not installed, skipped")
        else:
            bench_database(url, args)


if __name__ == "__main__":
    main()
