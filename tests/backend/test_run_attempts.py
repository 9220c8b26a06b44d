"""Run times across resumes: the first start is kept, each launch is an attempt, the duration sums them."""

from __future__ import annotations

import json
import time

import pytest
from alembic import command
from sqlalchemy import text

from backend.attempts import closed, duration_s, opened
from backend.db import alembic_config, make_engine
from contract.events import STOP_REQUESTED_REASON

from tests.backend.test_integration import tiny_config, wait_step

pytestmark = pytest.mark.slow


def test_resume_keeps_the_first_start_and_the_duration_sums_the_attempts(live_server_factory):
    server = live_server_factory(max_cpu_runs=1, stop_grace_s=60)
    # Long enough that the stop lands mid-run: a 12-step run once finished (9 steps/s) in the ~2 s between
    # the API showing step 2 and the SIGTERM arriving, and was `finished`, never `stopped`.
    run_id = server.post("/api/runs", json={"config": tiny_config(steps=100)}).json()["id"]
    first = wait_step(server, run_id, 2)
    started = first["started_at"]
    assert len(first["attempts"]) == 1 and first["attempts"][0]["ended_at"] is None
    server.post(f"/api/runs/{run_id}/stop").raise_for_status()
    stopped = server.wait_status(run_id, ("stopped",), timeout=120)
    time.sleep(3)  # time between attempts, which the duration must leave out
    server.post(f"/api/runs/{run_id}/resume").raise_for_status()
    done = server.wait_status(run_id, ("finished",), timeout=240)

    assert done["started_at"] == started  # the resume did not overwrite the first start
    one, two = done["attempts"]
    assert one["started_at"] == started and one["ended_at"] == stopped["finished_at"]
    assert one["status"] == "stopped" and one["reason"] == STOP_REQUESTED_REASON and one["exit_code"] == 0
    assert two["status"] == "finished" and two["exit_code"] == 0 and two["ended_at"] == done["finished_at"]
    assert two["started_at"] >= one["ended_at"] + 3
    ran = (one["ended_at"] - one["started_at"]) + (two["ended_at"] - two["started_at"])
    assert done["duration_s"] == pytest.approx(ran)
    assert done["duration_s"] <= done["finished_at"] - done["started_at"] - 3
    assert server.get("/api/runs", params={"limit": 5}).json()["items"][0]["attempts"] == done["attempts"]


def test_a_failed_attempt_records_why_it_ended(live_server_factory):
    server = live_server_factory(max_cpu_runs=1)
    cfg = tiny_config(steps=4)
    not_weights = server.data_dir / "weights.pt"  # inside the readable data dir, so only the trainer finds it bad
    not_weights.write_bytes(b"not a checkpoint")
    cfg["model"]["pretrained"] = str(not_weights)
    run_id = server.post("/api/runs", json={"config": cfg}).json()["id"]
    run = server.wait_status(run_id, ("failed",), timeout=120)
    (attempt,) = run["attempts"]
    assert attempt["status"] == "failed" and "model.pretrained" in attempt["reason"]
    assert attempt["exit_code"] == 2 and attempt["ended_at"] == run["finished_at"]


def test_attempt_bookkeeping_counts_only_running_time():
    attempts = opened([], 100.0)
    assert duration_s(attempts, now=130.0, active=True) == 30.0
    attempts = closed(attempts, 150.0, "stopped", "received SIGTERM", 0)
    assert closed(attempts, 999.0, "failed", None, 1) == attempts  # nothing open: unchanged
    attempts = opened(attempts, 1000.0)
    assert duration_s(attempts, now=1010.0, active=True) == 60.0
    attempts = closed(attempts, 1020.0, "finished", None, 0)
    assert duration_s(attempts, now=5000.0) == 70.0
    # records from before attempts were kept
    assert duration_s([], now=50.0, started_at=10.0, finished_at=40.0) == 30.0
    assert duration_s([], now=50.0, started_at=None) is None


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    return request.getfixturevalue("postgres_url")  # skipped where PostgreSQL is not installed


def test_the_migration_gives_existing_runs_one_attempt_from_their_times(database_url):
    command.upgrade(alembic_config(database_url), "0001")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        for run_id, status, started, finished in (("r-done", "finished", 10.0, 70.0), ("r-live", "running", 20.0, None),
                                                  ("r-queued", "queued", None, None)):
            conn.execute(text(
                "INSERT INTO runs (id, name, status, tags, config, gpus, nproc, devices, step, latest, best, "
                "metric_names, model, dataset, created_at, started_at, finished_at, exit_code, run_dir, last_seq, "
                "resume, stop_requested) VALUES (:id, 'n', :status, '[]', '{}', 0, 1, '[]', 0, '{}', '{}', '[]', '', "
                "'', 1.0, :started, :finished, :code, '', -1, false, false)"),
                {"id": run_id, "status": status, "started": started, "finished": finished,
                 "code": 0 if finished else None})
    command.upgrade(alembic_config(database_url), "head")
    with engine.connect() as conn:
        rows = {run_id: json.loads(v) if isinstance(v, str) else v
                for run_id, v in conn.execute(text("SELECT id, attempts FROM runs")).all()}
        notes = set(conn.execute(text("SELECT notes FROM runs")).scalars())
    engine.dispose()
    assert rows["r-done"] == [{"started_at": 10.0, "ended_at": 70.0, "status": "finished", "reason": None,
                               "exit_code": 0}]
    assert rows["r-live"] == [{"started_at": 20.0, "ended_at": None, "status": None, "reason": None,
                               "exit_code": None}]
    assert rows["r-queued"] == [] and notes == {""}
