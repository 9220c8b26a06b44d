"""The store's queries against a real, migrated SQLite file: filters, orders, idempotent inserts."""

from __future__ import annotations

import pytest
from sqlmodel import Session

from backend import store
from backend.db import DbWriter, read
from backend.models import Run


def _write(engine, fn, *args):
    """Run `fn(session, *args)` as the server's single writer does, committed."""
    writer = DbWriter(engine)
    try:
        return writer.call(fn, *args)
    finally:
        writer.close()


def _add_runs(engine, *runs: Run) -> None:
    def job(session: Session) -> None:
        for run in runs:
            store.save_run(session, run)

    _write(engine, job)


def _run(run_id: str, status: str, created_at: float = 0.0, **fields) -> Run:
    return Run(id=run_id, name=fields.pop("name", run_id), status=status, created_at=created_at, **fields)


def _ids(runs: list[Run]) -> list[str]:
    return sorted(r.id for r in runs)


def test_run_queries_pick_runs_by_status_origin_and_scheduler_queue(engine):
    _add_runs(engine,
              _run("running", "running"), _run("lost", "lost"), _run("done", "finished"),
              _run("attached-running", "running", attached=True),
              _run("queued-new", "queued", created_at=2.0), _run("queued-old", "queued", created_at=1.0),
              _run("queued-in-slurm", "queued", executor="slurm", slurm_job_id="42"))

    assert _ids(read(engine, store.runs_in_status, ["running"])) == ["attached-running", "running"]
    assert _ids(read(engine, store.runs_in_status, ["running"], True)) == ["attached-running"]
    assert _ids(read(engine, store.active_launched_runs)) == ["lost", "running"]
    assert _ids(read(engine, store.watched_launched_runs)) == ["lost", "queued-in-slurm", "running"]
    # Oldest first; the one SLURM already holds is not waiting for the launcher.
    assert [r.id for r in read(engine, store.queued_unsubmitted_runs)] == ["queued-old", "queued-new"]


def test_silent_attached_runs_are_those_not_heard_from_since_the_cutoff(engine):
    _add_runs(engine, _run("quiet", "running", attached=True, last_seen=10.0),
              _run("chatty", "running", attached=True, last_seen=100.0),
              _run("quiet-but-done", "finished", attached=True, last_seen=10.0),
              _run("quiet-launched", "running", last_seen=10.0))

    assert _ids(read(engine, store.silent_attached_runs, ("starting", "running"), 50.0)) == ["quiet"]
    assert len(read(engine, store.silent_attached_runs, ("running",), 1000.0, 1)) == 1


def test_run_page_filters_counts_and_sorts(engine):
    _add_runs(engine, _run("a", "running", 1.0, name="Alpha", tags=["base"], notes="first try"),
              _run("b", "finished", 2.0, name="beta", tags=["base", "lr"]),
              _run("c", "failed", 3.0, name="Gamma 100%", tags=["lr"]))

    total, rows = read(engine, store.run_page, ["running", "finished"], None, None, None, "created_at", True, 50, 0)
    assert total == 2 and [r.id for r in rows] == ["b", "a"]
    total, rows = read(engine, store.run_page, [], None, "lr", None, "name", False, 1, 1)
    assert total == 2 and [r.id for r in rows] == ["c"]  # beta, Gamma: names sort case-insensitively
    assert read(engine, store.run_page, [], None, None, "FIRST", "name", False, 50, 0)[0] == 1  # notes match
    assert read(engine, store.run_page, [], "0%", None, None, "name", False, 50, 0)[0] == 1  # % is literal


def test_edit_run_saves_only_what_its_condition_allows(engine):
    _add_runs(engine, _run("r", "queued"))

    def start(run: Run) -> None:
        run.status = "starting"

    assert _write(engine, store.edit_run, "r", start, lambda run: run.status == "running") is None
    assert read(engine, store.get_run, "r").status == "queued"
    assert _write(engine, store.edit_run, "r", start).status == "starting"
    assert read(engine, store.get_run, "r").status == "starting"
    assert _write(engine, store.edit_run, "missing", start) is None


def test_events_are_stored_once_and_read_back_in_seq_order(engine):
    _add_runs(engine, _run("r", "running"))
    events = [
        {"seq": 2, "time": 2.0, "kind": "matrix", "step": 10, "values": "second"},
        {"seq": 0, "time": 0.0, "kind": "status", "status": "starting"},
        {"seq": 1, "time": 1.0, "kind": "matrix", "step": 10, "values": "first"},
        {"seq": 3, "time": 3.0, "kind": "status", "status": "running", "step": 0},
    ]
    _write(engine, store.add_events, "r", events)
    _write(engine, store.add_events, "r", [{**events[0], "values": "changed"}])  # a re-sent seq is a no-op

    assert [e["seq"] for e in read(engine, store.events_after, "r", 0, 10)] == [1, 2, 3]
    assert read(engine, store.stored_seqs, "r", 1, 2) == {1, 2}
    assert read(engine, store.last_status_event, "r")["status"] == "running"
    assert read(engine, store.matrix_at, "r", 10)["values"] == "second"  # the last recorded at that step
    assert read(engine, store.matrix_steps, "r") == [(10, 1), (10, 2)]
    assert [s for s, _ in read(engine, store.events_of_kind_after, "r", "status", 0)] == [3]


def _round_trip_of_non_ascii_text(engine) -> None:
    """Events are stored as UTF-8 JSON text (store.event_json, not ASCII escapes): any script, emoji, quotes,
    control characters and backslashes come back exactly as sent."""
    _add_runs(engine, _run("r", "running"))
    message = 'фото кошки 🐱, 猫の写真 "quoted" \\ back\\slash, tab\tand\nnewline, nul\u0000'
    event = {"seq": 0, "time": 0.5, "kind": "log", "level": "info", "message": message, "extra": {"ключ": ["é", 1]}}
    _write(engine, store.add_events, "r", [event])
    assert read(engine, store.events_after, "r", -1, 10) == [event]


def test_event_text_in_any_script_round_trips_on_sqlite(engine):
    _round_trip_of_non_ascii_text(engine)


@pytest.mark.slow  # starts PostgreSQL
def test_event_text_in_any_script_round_trips_on_postgresql(postgres_engine):
    _round_trip_of_non_ascii_text(postgres_engine)


def test_series_points_come_back_ordered_and_a_resume_drops_the_points_it_supersedes(engine):
    _add_runs(engine, _run("r", "running"))
    # (run_id, name, step, seq, time, value), inserted out of order, step 3 logged twice
    points = [("r", "loss", step, seq, float(seq), value)
              for step, seq, value in [(5, 6, 0.5), (1, 1, 0.9), (3, 3, 0.7), (3, 4, 0.6), (2, 2, 0.8)]]
    _write(engine, store.add_points, points)
    _write(engine, store.add_points, points[:1])  # idempotent

    rows = read(engine, store.series_points, "r", "loss", 0, 100, 10)
    assert [(step, value) for step, _, value in rows] == [(1, 0.9), (2, 0.8), (3, 0.7), (3, 0.6), (5, 0.5)]
    assert len(read(engine, store.series_points, "r", "loss", 2, 3, 10)) == 3
    assert read(engine, store.series_step_range, "r", "loss", 2, 100) == (2, 5)

    # A resume from step 2 announced at seq 5 supersedes the earlier attempt's points past step 2.
    assert _write(engine, store.drop_points_after, "r", 2, 5) == 2  # both step-3 points; step 5 came after (seq 6)
    assert [r[0] for r in read(engine, store.series_points, "r", "loss", 0, 100, 10)] == [1, 2, 5]
    buckets = read(engine, store.series_buckets, "r", "loss", 1, 5, 2)
    assert [(b, vmin, vmax, step) for b, vmin, vmax, step, *_ in buckets] == [(0, 0.8, 0.9, 2), (1, 0.5, 0.5, 5)]


def _many_rows_round_trip(engine) -> None:
    """Inserts go in many-row statements of power-of-two sizes (store/bulk.py): a batch larger than one
    statement, re-sent in part, stores every row once, and its rollup upserts widen the blocks exactly as a
    rebuild from the stored points does."""
    from random import Random

    from sqlalchemy import text

    from backend.store import rollups
    from backend.store.bulk import MAX_ROWS, chunk_sizes

    _add_runs(engine, _run("r", "running"))
    rng = Random(3)
    points = [("r", name, step, step, float(step), rng.uniform(-5, 5))
              for step in range(0, 2 * MAX_ROWS + 300) for name in ("loss", "acc") if rng.random() < 0.9]
    assert len(chunk_sizes(len(points), MAX_ROWS)) > 3
    _write(engine, store.add_points, points)
    _write(engine, store.add_points, points[len(points) // 3:] + points[:7])  # overlapping re-send: no-ops
    rows = read(engine, store.series_points, "r", "loss", 0, 10**6, 10**6)
    assert [(s, v) for s, _, v in rows] == [(p[2], p[5]) for p in points if p[1] == "loss"]

    def rollups_now(session):
        return session.execute(text("SELECT name, level, block_start, vmin, vmax, last_step FROM metric_rollups "
                                    "ORDER BY name, level, block_start")).all()

    kept = read(engine, rollups_now)
    _write(engine, lambda session: rollups.rebuild_after(session, "r", -1))
    assert kept == read(engine, rollups_now) and len(kept) > 2 * MAX_ROWS // rollups.BLOCK


def test_inserts_larger_than_one_statement_store_every_row_once_on_sqlite(engine):
    _many_rows_round_trip(engine)


@pytest.mark.slow  # starts PostgreSQL
def test_inserts_larger_than_one_statement_store_every_row_once_on_postgresql(postgres_engine):
    _many_rows_round_trip(postgres_engine)


def test_chunk_sizes_are_powers_of_two_that_sum_to_the_row_count():
    from backend.store.bulk import chunk_sizes

    for n in (0, 1, 2, 3, 200, 1023, 1024, 1025, 1600, 5000):
        for largest in (1, 5, 999, 1024, 5461):
            sizes = chunk_sizes(n, largest)
            assert sum(sizes) == n
            assert all(size & (size - 1) == 0 and size <= largest for size in sizes)
            assert sizes == sorted(sizes, reverse=True)
    assert chunk_sizes(1600, 1024) == [1024, 512, 64]
