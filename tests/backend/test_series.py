"""Downsampled series read from the rollups give exactly the plain min/max/last bucketing of the points.

Random series with gaps, repeated steps and crash-resumes (whose `running` status supersedes the points past
its step) go through the real ingest API; every answer of GET /series is compared with a plain Python
bucketing of the points that should survive.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from sqlalchemy import text

from backend.store import rollups
from contract.events import MAX_STEP

from tests.backend.test_db import insert_run_of_the_first_schema
from tests.backend.test_ingest import (
    _metric,
    _post,
    _running,
    _running_with_token,
    rollups_kept_and_rebuilt,
)


def _plain_series(points: list[tuple[int, int, float, float]], lo: int, hi: int, n: int) -> tuple[dict, bool]:
    """The reference: (step, seq, time, value) points in [lo, hi] as at most n min/max/last buckets."""
    inside = sorted(p for p in points if lo <= p[0] <= hi)
    if len(inside) <= n:
        return {"step": [p[0] for p in inside], "time": [p[2] for p in inside], "min": [p[3] for p in inside],
                "max": [p[3] for p in inside], "last": [p[3] for p in inside]}, False
    first, span = inside[0][0], inside[-1][0] - inside[0][0] + 1
    buckets: dict[int, list] = {}
    for p in inside:
        buckets.setdefault((p[0] - first) * n // span, []).append(p)
    out: dict[str, list] = {"step": [], "time": [], "min": [], "max": [], "last": []}
    for b in sorted(buckets):
        rows = buckets[b]
        last = max(rows, key=lambda r: (r[0], r[1]))
        for key, v in zip(out, (last[0], last[2], min(r[3] for r in rows), max(r[3] for r in rows), last[3])):
            out[key].append(v)
    return out, True


def _random_run(rng: random.Random) -> tuple[list[dict[str, Any]], list[tuple[int, int, float, float]]]:
    """Events of a run with gaps, repeated steps and two crash-resumes, and the `loss` points that survive."""
    events: list[dict[str, Any]] = []
    points: list[tuple[int, int, float, float]] = []
    seq, step = 0, 0
    for attempt in range(3):
        if attempt:  # resume from a checkpoint behind the last logged step: later points are superseded
            step = rng.randint(step // 2, step)
            events.append({"seq": seq, "time": 1000.0 + seq, "kind": "status", "status": "running", "step": step})
            points = [p for p in points if p[0] <= step or p[1] > seq]
            seq += 1
        for _ in range(rng.randint(2500, 4000)):
            step += rng.choice((1, 1, 1, 2, 7, 60)) if rng.random() > 0.01 else rng.randint(500, 40000)  # gaps
            for _ in range(2 if rng.random() < 0.05 else 1):  # the same step logged twice
                value = rng.gauss(0, 1) + (80.0 if rng.random() < 0.002 else 0.0)
                events.append(_metric(seq, step, loss=value, lr=rng.random()))
                points.append((step, seq, 1000.0 + seq, value))
                seq += 1
    return events, points


def _assert_same(got: dict[str, Any], want: tuple[dict, bool]) -> None:
    series, downsampled = want
    assert got["downsampled"] is downsampled
    loss = got["series"]["loss"]
    assert loss["step"] == series["step"]
    for key in ("time", "min", "max", "last"):
        assert loss[key] == pytest.approx(series[key], rel=0, abs=0), key


def test_series_from_rollups_equal_the_plain_bucketing_over_gaps_repeats_and_resumes(app_server):
    _compare_random_series(app_server, random.Random(13))


@pytest.mark.slow  # starts PostgreSQL
def test_series_on_postgresql_equal_the_plain_bucketing(postgres_url, app_server_factory):
    server = app_server_factory(database_url=postgres_url)
    assert server.services.engine.dialect.name == "postgresql"
    _compare_random_series(server, random.Random(21))


def _compare_random_series(app_server: Any, rng: random.Random) -> None:
    run_id, token = _running_with_token(app_server)
    events, points = _random_run(rng)
    for i in range(0, len(events), 700):
        assert _post(app_server, run_id, token, events[i:i + 700]).status_code == 200
    last_step = max(p[0] for p in points)
    queries = [(None, None, n) for n in (2, 3, 7, 97, 1000)]
    for _ in range(25):
        a, b = sorted(rng.randint(0, last_step) for _ in range(2))
        queries.append((a, b, rng.choice((1, 5, 50, 300, 1000))))
    for start, end, n in queries:
        params = {"names": "loss", "buckets": n, **({"start": start, "end": end} if start is not None else {})}
        got = app_server.client.get(f"/api/runs/{run_id}/series", params=params).json()
        lo, hi = (0, MAX_STEP) if start is None else (start, end)
        _assert_same(got, _plain_series(points, lo, hi, n))


def test_rollups_kept_at_ingest_equal_rollups_rebuilt_from_the_points(app_server):
    run_id, token = _running_with_token(app_server)
    events, _ = _random_run(random.Random(5))
    for i in range(0, len(events), 500):
        assert _post(app_server, run_id, token, events[i:i + 500]).status_code == 200
    kept, rebuilt = rollups_kept_and_rebuilt(app_server, run_id)
    assert len(kept) > 1000 and {row[1] for row in kept} == set(range(1, rollups.LEVELS + 1))
    assert kept == rebuilt


def test_the_migration_builds_the_rollups_of_series_stored_before_it(tmp_path):
    from alembic import command
    from sqlmodel import Session

    from backend.db import alembic_config, make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    cfg = alembic_config()
    rng = random.Random(3)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        insert_run_of_the_first_schema(conn, "r1")
        conn.execute(text("INSERT INTO metric_points VALUES ('r1', :name, :step, :seq, 0, :value)"),
                     [{"name": name, "step": s * 3 + rng.randint(0, 2), "seq": i * 2 + j, "value": rng.random()}
                      for i, s in enumerate(range(20000)) for j, name in enumerate(("loss", "acc"))])
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    select = text("SELECT name, level, block_start, vmin, vmax, last_step FROM metric_rollups ORDER BY 1, 2, 3")
    with Session(engine) as session:
        migrated = session.execute(select).all()
        rollups.rebuild_after(session, "r1", -1)
        assert len(migrated) > 8000 and migrated == session.execute(select).all()


def _aligned_windows(rng: random.Random, last_step: int) -> list[tuple[int, int, int]]:
    """(start, end, buckets) whose edges fall on, just before and just after rollup block boundaries, with
    buckets exactly as wide as a block of each level, and a few random ones."""
    windows = []
    for level in range(rollups.LEVELS - 1):
        size = rollups.BLOCK ** level
        for lo in (0, 1, size - 1, size, size + 1, 3 * rollups.BLOCK ** (level + 1)):
            for width in (size, rollups.BLOCK ** (level + 1), rollups.BLOCK ** (level + 1) + 1):
                n = rng.choice((3, 7, 20))
                hi = min(last_step, lo + width * n - 1 + rng.choice((0, 0, 1, -1)))
                windows.append((lo, hi, n))
    windows += [(*sorted(rng.randint(0, last_step) for _ in range(2)), rng.randint(1, 300)) for _ in range(30)]
    return windows


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_bucket_edges_on_rollup_block_boundaries_equal_the_plain_bucketing(database, tmp_path, request):
    from sqlmodel import Session

    from backend.db import make_engine, migrate
    from backend.services.metrics import downsample_minmax
    from backend.store import add_points

    url = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO runs (id, name, status, tags, config, gpus, nproc, devices, step, latest, best, "
                          "metric_names, model, dataset, created_at, run_dir, last_seq, resume, stop_requested) "
                          "VALUES ('r1', 'old', 'finished', '[]', '{}', 0, 1, '[]', 0, '{}', '{}', '[]', '', '', 0, "
                          "'', -1, false, false)"))
    rng, points, seq = random.Random(7), [], 0
    for step in range(120_000):  # dense, so windows start where asked; a few gaps and repeated steps
        if rng.random() < 0.001:
            continue
        for _ in range(2 if rng.random() < 0.01 else 1):
            points.append((step, seq, float(seq), rng.gauss(0, 1)))
            seq += 1
    with Session(engine) as session:
        for i in range(0, len(points), 50_000):
            add_points(session, [("r1", "loss", s, q, t, v) for s, q, t, v in points[i:i + 50_000]])
        session.commit()
        for lo, hi, n in _aligned_windows(rng, points[-1][0]):
            got, downsampled = downsample_minmax(session, "r1", "loss", lo, hi, n)
            assert got.pop("nonfinite") is None  # no value was NaN or inf
            want, want_downsampled = _plain_series(points, lo, hi, n)
            assert (got, downsampled) == (want, want_downsampled), (lo, hi, n)
    engine.dispose()


def test_null_values_are_counted_per_series_and_a_resume_drops_those_it_superseded(app_server):
    run_id, token = _running_with_token(app_server)
    events = [_metric(s, s, loss=1.0 / (s + 1) if s < 6 else None, nan=None) for s in range(10)]
    events += [_running(10, 7)]  # resumed from step 7: steps 8 and 9 of the first attempt are superseded
    events += [_metric(11 + i, s, loss=0.5, nan=None) for i, s in enumerate(range(8, 12))]
    assert _post(app_server, run_id, token, events).status_code == 200

    def nonfinite(**params: Any) -> dict[str, Any]:
        got = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": ["loss", "nan"], **params})
        return {name: s["nonfinite"] for name, s in got.json()["series"].items()}

    every = nonfinite()
    assert every["loss"] == {"count": 2, "first_step": 6, "first_time": 1006.0, "last_step": 7, "last_time": 1007.0}
    assert every["nan"] == {"count": 12, "first_step": 0, "first_time": 1000.0, "last_step": 11, "last_time": 1014.0}
    assert nonfinite(start=8, end=9, buckets=1) == {"loss": None, "nan": {
        "count": 2, "first_step": 8, "first_time": 1011.0, "last_step": 9, "last_time": 1012.0}}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_migration_records_the_null_values_of_events_stored_before_it(database, tmp_path, request):
    from alembic import command
    from sqlmodel import Session

    from backend.db import alembic_config, make_engine
    from backend.services.metrics import downsample_minmax

    url = request.getfixturevalue("postgres_url") if database == "postgresql" else f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    cfg = alembic_config()
    events = [_metric(s, s, loss=None if s >= 4 else 1.0) for s in range(8)] + [_running(8, 5)]
    events += [_metric(9, 6, loss=None)]
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0005")
        conn.execute(text("INSERT INTO runs (id, name, status, tags, config, gpus, nproc, devices, step, latest, best, "
                          "metric_names, model, dataset, created_at, run_dir, last_seq, resume, stop_requested) "
                          "VALUES ('r1', 'old', 'finished', '[]', '{}', 0, 1, '[]', 0, '{}', '{}', '[]', '', '', 0, "
                          "'', 9, false, false)"))
        conn.execute(text("INSERT INTO events (run_id, seq, kind, time, step, payload) "
                          "VALUES ('r1', :seq, :kind, :time, :step, :payload)"),
                     [{"seq": e["seq"], "kind": e["kind"], "time": e["time"], "step": e["step"],
                       "payload": json.dumps(e)} for e in events])
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    with Session(engine) as session:
        series, _ = downsample_minmax(session, "r1", "loss", None, None, 100)
    # Steps 4 and 5 of the first attempt, and step 6 as the resumed one logged it (its first step 6 superseded).
    assert series["nonfinite"] == {"count": 3, "first_step": 4, "first_time": 1004.0, "last_step": 6,
                                   "last_time": 1009.0}
