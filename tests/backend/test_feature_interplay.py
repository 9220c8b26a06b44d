"""Where the executors, attached runs, attempts and readable folders meet: the app in-process on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from backend.attempts import started_fields
from backend.models import Run
from backend.services.ingest import grant_token

from tests.backend.test_attach_api import attach, post_events, status
from tests.backend.test_ingest import _queued_run


def _as_slurm_job(server: Any, run_id: str, **fields: Any) -> str:
    """The run as the launcher leaves it after `sbatch`: queued (SLURM holds it), a job id, a run token."""

    def job(session):
        run = session.get(Run, run_id)
        token = grant_token(run)
        run.executor, run.slurm_job_id, run.status = "slurm", "4242", "queued"
        for key, value in fields.items():
            setattr(run, key, value)
        session.add(run)
        return token

    return server.services.writer.call(job)


def test_a_slurm_job_that_starts_before_the_next_poll_follows_its_trainers_status(app_server):
    run_id = _queued_run(app_server)
    token = _as_slurm_job(app_server, run_id, attempts=[{"started_at": 1.0, "ended_at": None, "status": None,
                                                         "reason": None, "exit_code": None}])
    assert post_events(app_server, run_id, token, [status(0, "starting"), status(1, "running", step=0)]).is_success
    run = app_server.client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "running" and run["started_at"] == 2000.0  # the trainer's start, not the submit
    assert run["attempts"][-1]["started_at"] == 2000.0


def test_a_resumed_job_keeps_the_runs_first_start_and_its_attempt_starts_when_slurm_runs_it():
    first = {"started_at": 100.0, "ended_at": 150.0, "status": "stopped", "reason": None, "exit_code": 0}
    submitted = {"started_at": 200.0, "ended_at": None, "status": None, "reason": None, "exit_code": None}
    fields = started_fields([first, submitted], 100.0, 260.0)  # 60 s in SLURM's queue
    assert fields["started_at"] == 100.0 and fields["attempts"][-1]["started_at"] == 260.0
    assert started_fields([submitted], None, 260.0)["started_at"] == 260.0  # a first attempt starts the run


def test_deleting_a_run_still_in_slurms_queue_is_refused_so_the_job_is_not_left_behind(app_server):
    run_id = _queued_run(app_server)
    _as_slurm_job(app_server, run_id)
    r = app_server.client.delete(f"/api/runs/{run_id}")
    assert r.status_code == 409 and "4242" in r.json()["detail"]
    assert app_server.client.get(f"/api/runs/{run_id}").status_code == 200


def test_resuming_a_slurm_run_with_overrides_is_not_held_to_this_machines_cores(app_server):
    run_id = _queued_run(app_server)
    run_dir = Path(app_server.client.get(f"/api/runs/{run_id}").json()["run_dir"])
    (run_dir / "checkpoints" / "step_000010").mkdir(parents=True)
    (run_dir / "checkpoints" / "latest").write_text("step_000010")
    _as_slurm_job(app_server, run_id, status="stopped", slurm_job_id=None, nproc=64)
    r = app_server.client.post(f"/api/runs/{run_id}/resume", json={"overrides": {"optim.lr": 1e-4}})
    assert r.status_code == 200, r.text


def test_stopping_a_lost_attached_run_closes_its_attempt(app_server):
    made = attach(app_server).json()
    run_id, token = made["run"]["id"], made["token"]
    assert post_events(app_server, run_id, token, [status(0, "running", step=0)]).is_success

    def lose(session):
        run = session.get(Run, run_id)
        run.status, run.last_seen = "lost", run.attempts[-1]["started_at"] + 30
        session.add(run)

    app_server.services.writer.call(lose)
    stopped = app_server.client.post(f"/api/runs/{run_id}/stop").json()
    assert stopped["status"] == "stopped" and stopped["attempts"][-1]["ended_at"] is not None
    assert stopped["duration_s"] >= 30


def test_a_resume_by_hand_keeps_the_name_and_tags_edited_in_the_dashboard(app_server):
    run_id = attach(app_server).json()["run"]["id"]
    assert app_server.client.patch(f"/api/runs/{run_id}", json={"name": "renamed", "tags": ["keep"]}).is_success
    again = attach(app_server, run_id=run_id).json()["run"]
    assert again["name"] == "renamed" and again["tags"] == ["keep"]


def test_a_run_uploaded_by_sync_gets_its_start_from_its_events(app_server):
    made = attach(app_server, live=False).json()
    run_id, token = made["run"]["id"], made["token"]
    events = [status(0, "starting"), status(1, "running", step=0), status(2, "finished", step=100)]
    assert post_events(app_server, run_id, token, events).is_success
    run = app_server.client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "finished" and run["started_at"] == 2000.0 and run["duration_s"] == 2.0


def _run_dir_with_files(root: Path) -> Path:
    (root / "checkpoints" / "step_000001").mkdir(parents=True)
    (root / "checkpoints" / "step_000001" / "model.safetensors").write_bytes(b"weights")
    (root / "checkpoints" / "latest").write_text("step_000001")
    (root / "stdout.log").write_text("a line of the trainer's output\n")
    return root


def test_an_attached_runs_files_are_served_only_inside_the_readable_folders(app_server, tmp_path):
    outside = _run_dir_with_files(tmp_path / "elsewhere" / "run")
    inside = _run_dir_with_files(app_server.services.settings.data_dir / "by-hand" / "run")
    hidden = attach(app_server, run_dir=str(outside)).json()["run"]["id"]
    shown = attach(app_server, run_dir=str(inside)).json()["run"]["id"]
    client = app_server.client
    assert client.get(f"/api/runs/{hidden}/logs").json()["lines"] == []
    assert client.get(f"/api/runs/{hidden}/checkpoints").json() == []
    denied = client.get(f"/api/runs/{hidden}/checkpoints/latest/download", params={"file": "model.safetensors"})
    assert denied.status_code == 404 and str(outside) not in denied.text
    assert client.get(f"/api/runs/{shown}/logs").json()["lines"] == ["a line of the trainer's output"]
    assert [c["name"] for c in client.get(f"/api/runs/{shown}/checkpoints").json()] == ["step_000001"]
    got = client.get(f"/api/runs/{shown}/checkpoints/latest/download", params={"file": "model.safetensors"})
    assert got.status_code == 200 and got.content == b"weights"


def _stopped_at_step_10(app_server, config: dict, stored_config: Callable[[dict], dict] = lambda c: c) -> dict:
    """A run created with `config`, stopped with a checkpoint at step 10, its stored config made
    `stored_config(config)` (as an older server may have stored it)."""
    run = app_server.client.post("/api/runs", json={"config": config}).json()
    checkpoints = Path(run["run_dir"]) / "checkpoints"
    (checkpoints / "step_000010").mkdir(parents=True)
    (checkpoints / "latest").write_text("step_000010")

    def stop(session):
        row = session.get(Run, run["id"])
        row.status, row.config = "stopped", stored_config(row.config)
        session.add(row)

    app_server.services.writer.call(stop)
    return run


def test_a_resume_that_changes_the_model_is_refused_and_the_run_keeps_its_config(app_server):
    run = _stopped_at_step_10(app_server, {"model": {"preset": "tiny-vit"}})
    r = app_server.client.post(f"/api/runs/{run['id']}/resume",
                               json={"overrides": {"model.preset": "tiny-rn", "loss.kind": "siglip", "train.steps": 50}})
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["detail"]] == ["model.preset", "loss.kind"]
    assert "'tiny-vit'" in r.json()["detail"][0]["message"]
    kept = app_server.client.get(f"/api/runs/{run['id']}").json()
    assert kept["status"] == "stopped" and kept["config"]["model"]["preset"] == "tiny-vit"
    assert kept["config"]["train"]["steps"] == run["config"]["train"]["steps"]
    resumed = app_server.client.post(f"/api/runs/{run['id']}/resume", json={"overrides": {"optim.lr": 1e-4}})
    assert resumed.status_code == 200 and resumed.json()["config"]["optim"]["lr"] == 1e-4


def test_a_stored_config_a_newer_rule_refuses_is_a_422_on_resume_and_overrides_can_fix_it(app_server):
    """A run created before a config rule existed (here: best_metric val/acc with best_mode min, which kept the
    worst evaluation as `best`) is a 422 naming the field on a plain resume, not a 500."""
    run = _stopped_at_step_10(app_server, {"train": {"steps": 20}}, lambda config: {
        **config, "checkpoint": {**config["checkpoint"], "best_metric": "val/acc"}})
    plain = app_server.client.post(f"/api/runs/{run['id']}/resume")
    assert plain.status_code == 422, plain.text
    assert [e["field"] for e in plain.json()["detail"]] == ["(top level)"]
    assert "checkpoint.best_mode" in plain.json()["detail"][0]["message"]
    fixed = app_server.client.post(f"/api/runs/{run['id']}/resume",
                                   json={"overrides": {"checkpoint.best_mode": "max"}})
    assert fixed.status_code == 200, fixed.text
    assert fixed.json()["config"]["checkpoint"] == {**run["config"]["checkpoint"], "best_metric": "val/acc",
                                                     "best_mode": "max"}
