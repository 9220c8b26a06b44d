"""The attach API: registering a run started elsewhere, its state following its trainer's status events, the
stop poll, lost detection without a process. The app in-process on a real port and a SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend_fixtures import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]

CONFIG = {"name": "by-hand", "data": {"train": "/data/on/the/cluster/train.csv"}, "train": {"steps": 100}}


def attach(server: Any, **body: Any) -> httpx.Response:
    return server.client.post("/api/runs/attach", json={"config": CONFIG, "run_dir": "/scratch/run-1",
                                                        "host": "node07", **body})


def post_events(server: Any, run_id: str, token: str | None, events: list[dict]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return server.client.post(f"/api/runs/{run_id}/events", json={"events": events}, headers=headers)


def status(seq: int, value: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "time": 2000.0 + seq, "kind": "status", "status": value, "reason": None, **fields}


def control(server: Any, run_id: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return server.client.get(f"/api/runs/{run_id}/control", headers=headers)


def test_attach_registers_a_run_whose_state_follows_its_trainers_status_events(app_server):
    made = attach(app_server, nproc=2)
    assert made.status_code == 201, made.text
    run, token = made.json()["run"], made.json()["token"]
    assert run["attached"] is True and run["attached_host"] == "node07" and run["status"] == "starting"
    assert run["run_dir"] == "/scratch/run-1" and run["nproc"] == 2 and run["name"] == "by-hand"
    # the data paths name files on the trainer's host: not checked here
    assert run["dataset"] == "/data/on/the/cluster/train.csv"

    assert post_events(app_server, run["id"], token, [status(0, "starting"), status(1, "running", step=0)]).is_success
    assert app_server.client.get(f"/api/runs/{run['id']}").json()["status"] == "running"
    assert post_events(app_server, run["id"], token, [status(2, "finished", step=100)]).is_success
    done = app_server.client.get(f"/api/runs/{run['id']}").json()
    assert done["status"] == "finished" and done["finished_at"] == 2002.0 and done["can_resume"] is False
    assert app_server.client.post(f"/api/runs/{run['id']}/resume").status_code == 409

    # a resume by hand: the same run, a fresh token, `starting` again; the old token is void
    again = attach(app_server, run_id=run["id"])
    assert again.status_code == 201 and again.json()["run"]["status"] == "starting"
    assert post_events(app_server, run["id"], token, [status(3, "starting")]).status_code == 403
    assert post_events(app_server, run["id"], again.json()["token"], [status(3, "starting")]).is_success


def test_attach_refuses_bad_configs_unknown_runs_and_launched_runs(app_server):
    bad = attach(app_server, config={"optim": {"lr": "fast"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "optim.lr"
    assert attach(app_server, run_dir="").status_code == 422
    unknown = attach(app_server, run_id="r-nope")
    assert unknown.status_code == 404 and "r-nope" in unknown.json()["detail"]
    launched = app_server.client.post("/api/runs", json={"config": {"train": {"steps": 10}}}).json()
    refused = attach(app_server, run_id=launched["id"])
    assert refused.status_code == 409 and "launched by this server" in refused.json()["detail"]
    twice = attach(app_server, run_dir=launched["run_dir"])  # e.g. `cliplab sync` of a launched run's dir
    assert twice.status_code == 409 and launched["id"] in twice.json()["detail"]
    assert app_server.client.get("/api/runs").json()["total"] == 1


def _unchanged(server: Any, run: dict[str, Any], token: str) -> None:
    """The stored run is as `run` was registered, and its trainer's token still writes its events."""
    stored = server.client.get(f"/api/runs/{run['id']}").json()
    kept = ("run_dir", "attached_host", "status", "name", "config", "attempts")
    assert {k: stored[k] for k in kept} == {k: run[k] for k in kept}
    assert control(server, run["id"], token).status_code == 200


def test_a_run_id_sent_from_another_run_dir_is_a_409_naming_both_and_changes_nothing(app_server):
    made = attach(app_server).json()
    run, token = made["run"], made["token"]
    other = {**CONFIG, "name": "someone-else"}
    refused = attach(app_server, run_id=run["id"], run_dir="/scratch/run-2", host="node09", config=other)
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert f"run {run['id']!r} was attached from /scratch/run-1, not from /scratch/run-2" in detail
    assert "nothing was changed" in detail and "Leave run_id out" in detail and "run_token" in detail
    _unchanged(app_server, run, token)
    # a token that is not the run's current one (a registration since replaced it) shows nothing either
    stale = attach(app_server, run_id=run["id"], run_dir="/scratch/run-2", run_token="an-old-token")
    assert stale.status_code == 409 and "not the run's current token" in stale.json()["detail"]
    _unchanged(app_server, run, token)
    # from its own run dir, however spelled and from whichever node, the run continues
    again = attach(app_server, run_id=run["id"], run_dir="/scratch/./run-1/", host="node08")
    assert again.status_code == 201, again.text
    assert again.json()["run"]["id"] == run["id"] and again.json()["run"]["attached_host"] == "node08"


def test_a_moved_run_dir_continues_its_run_only_with_the_runs_token(app_server):
    made = attach(app_server).json()
    without = attach(app_server, run_id=made["run"]["id"], run_dir="/scratch/moved/run-1")
    assert without.status_code == 409 and "a directory moved from /scratch/run-1" in without.json()["detail"]
    moved = attach(app_server, run_id=made["run"]["id"], run_dir="/scratch/moved/run-1", run_token=made["token"])
    assert moved.status_code == 201, moved.text
    assert moved.json()["run"]["id"] == made["run"]["id"] and moved.json()["run"]["run_dir"] == "/scratch/moved/run-1"
    assert control(app_server, made["run"]["id"], made["token"]).status_code == 403  # a fresh token replaced it
    assert control(app_server, made["run"]["id"], moved.json()["token"]).status_code == 200


def test_another_runs_token_is_a_409_naming_both_runs_even_from_the_runs_own_dir(app_server):
    first = attach(app_server).json()
    second = attach(app_server, run_dir="/scratch/run-2").json()
    for run_dir in ("/scratch/run-1", "/scratch/run-2"):
        refused = attach(app_server, run_id=first["run"]["id"], run_dir=run_dir, run_token=second["token"])
        assert refused.status_code == 409, refused.text
        detail = refused.json()["detail"]
        assert f"the token of run {second['run']['id']!r} (run dir /scratch/run-2)" in detail
        assert f"not of run {first['run']['id']!r} (run dir /scratch/run-1)" in detail
    _unchanged(app_server, first["run"], first["token"])
    _unchanged(app_server, second["run"], second["token"])


def test_an_upload_registration_leaves_the_state_to_the_events(app_server):
    made = attach(app_server).json()
    run_id, token = made["run"]["id"], made["token"]
    post_events(app_server, run_id, token, [status(0, "starting"), status(1, "finished", step=100)])
    upload = attach(app_server, run_id=run_id, live=False)
    assert upload.status_code == 201 and upload.json()["run"]["status"] == "finished"


def test_an_uploaded_events_file_without_a_starting_line_still_starts_the_run_at_its_running_event(app_server):
    made = attach(app_server, live=False).json()
    run_id, token = made["run"]["id"], made["token"]
    metric = {"seq": 1, "time": 2001.0, "kind": "metric", "step": 1, "values": {"loss": 1.0}}
    assert post_events(app_server, run_id, token, [status(0, "running", step=0), metric,
                                                   status(2, "finished", step=100)]).is_success
    run = app_server.client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "finished" and run["started_at"] == 2000.0 and run["finished_at"] == 2002.0
    assert run["duration_s"] == 2.0
    assert [(a["started_at"], a["ended_at"], a["status"]) for a in run["attempts"]] == [(2000.0, 2002.0, "finished")]


def test_the_stop_poll_needs_the_runs_token_and_reports_a_stop_request(app_server_factory):
    server = app_server_factory(token="access")  # the poll is open to the run token, like ingestion
    server.client.headers["Authorization"] = "Bearer access"
    run_a = attach(server).json()
    run_b = attach(server).json()
    del server.client.headers["Authorization"]
    run_id = run_a["run"]["id"]
    assert control(server, run_id, None).status_code == 401
    assert control(server, run_id, run_b["token"]).status_code == 403
    assert control(server, run_id, run_a["token"]).json() == {"status": "starting", "stop_requested": False}
    assert server.client.post("/api/runs/attach", json={"config": CONFIG, "run_dir": "/x"}).status_code == 401

    stopping = server.client.post(f"/api/runs/{run_id}/stop", headers={"Authorization": "Bearer access"})
    assert stopping.json()["status"] == "stopping"
    assert control(server, run_id, run_a["token"]).json() == {"status": "stopping", "stop_requested": True}
    # `stopping` holds until the trainer reports its end, even if a late `running` event arrives
    post_events(server, run_id, run_a["token"], [status(0, "running", step=5)])
    assert control(server, run_id, run_a["token"]).json()["status"] == "stopping"
    post_events(server, run_id, run_a["token"], [status(1, "stopped", step=6, reason="stop requested")])
    assert control(server, run_id, run_a["token"]).json() == {"status": "stopped", "stop_requested": False}


@pytest.mark.slow  # waits for the lost timeout
def test_a_silent_attached_run_becomes_lost_and_returns_when_heard_from(app_server_factory):
    server = app_server_factory(lost_after_s=1.0)
    made = attach(server).json()
    run_id, token = made["run"]["id"], made["token"]
    lost = wait_until(lambda: (lambda r: r if r["status"] == "lost" else None)(
        server.client.get(f"/api/runs/{run_id}").json()), 15, 0.2, "the silent attached run to be lost")
    assert "node07" in lost["reason"] and "no events" in lost["reason"]
    post_events(server, run_id, token, [{"seq": 0, "time": 1.0, "kind": "heartbeat", "step": 3, "total_steps": 100}])
    assert server.client.get(f"/api/runs/{run_id}").json()["status"] == "running"

    # A lost attached run stops at once (nothing here to wait for); the flag still reaches a trainer that returns.
    wait_until(lambda: server.client.get(f"/api/runs/{run_id}").json()["status"] == "lost", 15, 0.2, "lost again")
    stopped = server.client.post(f"/api/runs/{run_id}/stop").json()
    assert stopped["status"] == "stopped" and "lost" in stopped["reason"]
    assert control(server, run_id, token).json()["stop_requested"] is True
    assert server.client.delete(f"/api/runs/{run_id}").status_code == 204


@pytest.mark.slow  # a live server with trainer processes
def test_an_attached_run_takes_no_cpu_slot_from_launched_runs(live_server_factory):
    server = live_server_factory(max_cpu_runs=1)
    assert attach(server).json()["run"]["status"] == "starting"
    config = {"data": {"num_workers": 0}, "train": {"steps": 1000, "batch_size": 8}}
    launched = server.post("/api/runs", json={"config": config}).json()
    started = server.wait_status(launched["id"], ("starting", "running"), timeout=30)
    assert started["attached"] is False
    assert server.post(f"/api/runs/{launched['id']}/stop").status_code == 200


def run_sync(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLAB_")}
    return subprocess.run([sys.executable, "-m", "trainer", "sync", *args], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def test_sync_names_a_missing_run_dir_a_missing_server_and_an_unreachable_one(tmp_path):
    (tmp_path / "events.jsonl").write_text('{"seq": 0, "time": 1.0, "kind": "heartbeat", "step": 0}\n')
    (tmp_path / "config.yaml").write_text("name: x\n")
    missing = run_sync(str(tmp_path / "nope"), "--server", "http://127.0.0.1:9")
    assert missing.returncode == 2 and "has no events.jsonl" in missing.stderr
    no_server = run_sync(str(tmp_path))
    assert no_server.returncode == 2 and "--server URL or set CLIPLAB_SERVER" in no_server.stderr
    closed = f"http://127.0.0.1:{free_port()}"
    away = run_sync(str(tmp_path), "--server", closed)
    assert away.returncode == 1 and f"cannot reach the dashboard at {closed}" in away.stderr
    assert not (tmp_path / "attach.json").exists()


def test_sync_and_train_name_https_to_a_plain_http_dashboard_as_a_wrong_address(app_server, tmp_path):
    (tmp_path / "events.jsonl").write_text('{"seq": 0, "time": 1.0, "kind": "heartbeat", "step": 0}\n')
    (tmp_path / "config.yaml").write_text("name: x\n")
    https = app_server.base_url.replace("http://", "https://")
    synced = run_sync(str(tmp_path), "--server", https)
    assert synced.returncode == 2 and f"use {app_server.base_url}" in synced.stderr, synced.stderr
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLAB_")}
    trained = subprocess.run([sys.executable, "-m", "trainer", "train", "--run-dir", str(tmp_path / "run"),
                              "--server", https], cwd=REPO, env=clean, capture_output=True, text=True, timeout=60)
    assert trained.returncode == 2 and f"use {app_server.base_url}" in trained.stderr, trained.stderr
    assert not (tmp_path / "run" / "events.jsonl").exists()  # stopped before training


def test_a_diverged_runs_nan_matrix_reaches_the_api_as_json_with_null_cells(app_server, tmp_path):
    """What the trainer writes for a NaN/inf similarity (null: JSON has neither), `cliplab sync` uploads and the
    matrix endpoint serves, as strict JSON; a NaN sent as is gets a 422 that says to send null."""
    from trainer.events import EventWriter

    nan, inf = float("nan"), float("inf")
    writer = EventWriter(tmp_path)
    writer.status("running", step=0)
    writer.emit("matrix", step=5, captions=["a", "b"], thumbnails=[], similarity=[[0.5, nan], [inf, -inf]],
                logit_scale=nan)
    writer.close()
    (tmp_path / "config.yaml").write_text("name: diverged\n")
    assert run_sync(str(tmp_path), "--server", app_server.base_url).returncode == 0
    [run] = app_server.client.get("/api/runs").json()["items"]

    def no_constants(name: str) -> None:
        raise AssertionError(f"{name} in the answer: not JSON")

    served = app_server.client.get(f"/api/runs/{run['id']}/matrices/5")
    matrix = json.loads(served.text, parse_constant=no_constants)
    assert matrix["similarity"] == [[0.5, None], [None, None]] and matrix["logit_scale"] is None
    assert [m["step"] for m in app_server.client.get(f"/api/runs/{run['id']}/matrices").json()] == [5]

    token = json.loads((tmp_path / "attach.json").read_text())["servers"][app_server.base_url]["token"]
    careless = json.dumps({"events": [{"seq": 9, "time": 1.0, "kind": "matrix", "step": 6, "similarity": [[nan]]}]})
    refused = app_server.client.post(f"/api/runs/{run['id']}/events", content=careless, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert refused.status_code == 422 and "send null instead" in refused.text
    assert app_server.client.get(f"/api/runs/{run['id']}/matrices/6").status_code == 404
