"""Attached runs: `cliplab train --server URL` started by hand shows up in a running dashboard, streams live,
stops from it, and `cliplab sync` uploads what an unreachable server missed.

Everything is real: `cliplab serve` subprocesses on free ports, `cliplab train` (and torchrun) subprocesses
on the tiny CPU demo config, SQLite.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from tests.attach_support import REPO, Trainer, demo_config, trainers  # noqa: F401 - trainers is a fixture
from tests.backend_fixtures import free_port, point_count, wait_until

pytestmark = pytest.mark.slow


def only_run(server: Any) -> dict[str, Any]:
    listed = server.get("/api/runs").json()
    assert listed["total"] == 1, listed
    return listed["items"][0]


def stored_events(server: Any, run_id: str) -> list[dict[str, Any]]:
    return server.get(f"/api/runs/{run_id}/events", params={"limit": 10_000}).json()["events"]


def series_points(server: Any, run_id: str) -> dict[str, list[int]]:
    names = server.get(f"/api/runs/{run_id}/metrics").json()["names"]
    got = server.get(f"/api/runs/{run_id}/series", params={"names": ",".join(names), "buckets": 20_000}).json()
    return {name: s["step"] for name, s in got["series"].items()}


def start_attached(server: Any, trainers: Any, cfg: dict[str, Any]) -> tuple[Trainer, str]:
    """A `cliplab train --server` subprocess, once its run is running on the server (a few steps in)."""
    trainer = trainers(server.data_dir, cfg).start("--server", server.base_url)
    run_id = wait_until(lambda: [r["id"] for r in server.get("/api/runs").json()["items"]
                                 if r["status"] == "running" and r["step"] >= 3], 180, 0.3, "running")[0]
    return trainer, run_id


def test_attached_run_streams_live_with_charts_and_matrix_and_finishes(live_server_factory, trainers):
    server = live_server_factory()
    trainer = trainers(server.data_dir, demo_config(steps=150, eval_every=50)).start("--server", server.base_url)

    def running_live() -> dict[str, Any] | None:
        assert trainer.proc.poll() is None, trainer.output()
        listed = server.get("/api/runs").json()["items"]
        return listed[0] if listed and listed[0]["status"] == "running" and listed[0]["step"] >= 5 else None

    live = wait_until(running_live, 180, 0.3, "the attached run to stream its steps")
    assert live["attached"] is True and live["attached_host"]
    assert live["run_dir"] == str(trainer.run_dir.resolve())
    assert live["can_resume"] is False  # the server cannot relaunch what it did not start
    assert trainer.wait() == 0, trainer.output()
    run = server.wait_status(live["id"], ("finished",), timeout=60)
    assert run["step"] == run["total_steps"] == 150
    assert only_run(server)["id"] == run["id"]
    assert f"/#/runs/{run['id']}" in trainer.output()

    in_file = trainer.file_events()
    assert [e["seq"] for e in stored_events(server, run["id"])] == [e["seq"] for e in in_file]
    points = series_points(server, run["id"])
    assert len(points["loss"]) == 150 and points["val/loss"] == [50, 100, 150]
    assert sum(map(len, points.values())) == point_count(in_file)
    assert [m["step"] for m in server.get(f"/api/runs/{run['id']}/matrices").json()] == [50, 100, 150]
    saved = json.loads((trainer.run_dir / "attach.json").read_text())["servers"][server.base_url]
    assert saved["run_id"] == run["id"] and saved["server"] == server.base_url
    assert (trainer.run_dir / "attach.json").stat().st_mode & 0o077 == 0  # the token file is the owner's


def test_attached_trainer_needs_the_servers_access_token_and_names_a_bad_address(live_server_factory, trainers):
    server = live_server_factory(token="s3cret-token")
    trainer = trainers(server.data_dir, demo_config(steps=4))

    without = trainer.run("--server", server.base_url)
    assert without.returncode == 2, without.stderr
    assert "requires its access token" in without.stderr and "CLIPLAB_TOKEN" in without.stderr
    wrong = trainer.run("--server", server.base_url, CLIPLAB_TOKEN="not-it")
    assert wrong.returncode == 2 and "token in CLIPLAB_TOKEN was refused" in wrong.stderr, wrong.stderr
    no_scheme = trainer.run("--server", f"127.0.0.1:{server.port}")
    assert no_scheme.returncode == 2 and "is not a dashboard address" in no_scheme.stderr, no_scheme.stderr
    not_cliplab = trainer.run("--server", f"{server.base_url}/elsewhere", CLIPLAB_TOKEN="s3cret-token")
    assert not_cliplab.returncode == 2 and "cliplab dashboard" in not_cliplab.stderr, not_cliplab.stderr
    assert not trainer.run_dir.exists()  # refused before anything was built or written
    attach = server.post("/api/runs/attach", json={"config": demo_config(4), "run_dir": "/x"})
    assert attach.status_code == 401

    ok = trainer.run("--server", server.base_url, CLIPLAB_TOKEN="s3cret-token")
    assert ok.returncode == 0, ok.stderr
    headers = {"Authorization": "Bearer s3cret-token"}
    listed = server.get("/api/runs", headers=headers).json()
    assert listed["total"] == 1 and listed["items"][0]["attached"] is True
    server.client.headers.update(headers)
    assert server.wait_status(listed["items"][0]["id"], ("finished",), timeout=30)["step"] == 4


def test_stop_from_the_dashboard_stops_the_attached_trainer_and_a_resume_by_hand_continues_it(
        live_server_factory, trainers, tmp_path):
    # The trainer's run dir is a readable folder of the server's (as on a shared file system), so its
    # checkpoints are listed; elsewhere the server does not read an attached run's files.
    server = live_server_factory(readable_dirs=json.dumps([str(tmp_path)]))
    trainer, run_id = start_attached(server, trainers, demo_config(steps=5000))
    stopping = server.post(f"/api/runs/{run_id}/stop")
    assert stopping.status_code == 200 and stopping.json()["status"] == "stopping"
    assert trainer.wait(120) == 0, trainer.output()
    run = server.wait_status(run_id, ("stopped",), timeout=30)
    assert run["reason"] == "stop requested from the dashboard"
    assert (trainer.run_dir / "checkpoints" / "latest").is_file()
    checkpoints = server.get(f"/api/runs/{run_id}/checkpoints").json()
    assert [c["step"] for c in checkpoints] == [run["step"]]
    assert server.post(f"/api/runs/{run_id}/resume").status_code == 409  # the server cannot relaunch it

    steps = run["step"] + 3
    resumed = trainer.run("--resume", "latest", "--set", f"train.steps={steps}", "--server", server.base_url)
    assert resumed.returncode == 0, resumed.stderr
    run = server.wait_status(run_id, ("finished",), timeout=30)
    assert only_run(server)["id"] == run_id and run["step"] == steps
    assert [e["seq"] for e in stored_events(server, run_id)] == [e["seq"] for e in trainer.file_events()]


def sync(server: Any, trainer: Trainer, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", "sync", str(trainer.run_dir), "--server", server.base_url],
                          cwd=REPO, env={**trainer.env, **env}, capture_output=True, text=True, timeout=120)


def test_a_run_trained_while_the_server_was_down_is_completed_by_sync_once(live_server_factory, trainers, tmp_path):
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    trainer = trainers(tmp_path, demo_config(steps=12, eval_every=6))
    (tmp_path / "datasets").mkdir()
    server = live_server_factory()
    (tmp_path / "datasets" / "demo").symlink_to((server.data_dir / "datasets" / "demo").resolve())

    offline = trainer.run("--server", closed)
    assert offline.returncode == 0, offline.stderr  # trained to the end without its dashboard
    assert offline.stderr.count("cannot reach the dashboard") == 1  # warned once
    assert f"cliplab sync {trainer.run_dir} --server {closed}" in offline.stderr
    assert not (trainer.run_dir / "attach.json").exists()
    in_file = trainer.file_events()

    first = sync(server, trainer)
    assert first.returncode == 0, first.stderr
    assert f"{len(in_file)} new event(s), 0 already there" in first.stdout
    run = only_run(server)
    assert run["attached"] is True and run["status"] == "finished" and run["step"] == 12
    assert [e["seq"] for e in stored_events(server, run["id"])] == [e["seq"] for e in in_file]
    points = series_points(server, run["id"])
    assert sum(map(len, points.values())) == point_count(in_file) and points["loss"] == list(range(1, 13))
    assert [m["step"] for m in server.get(f"/api/runs/{run['id']}/matrices").json()] == [6, 12]

    again = sync(server, trainer)
    assert again.returncode == 0, again.stderr
    assert f"0 new event(s), {len(in_file)} already there" in again.stdout
    assert only_run(server)["id"] == run["id"] and series_points(server, run["id"]) == points

    # A second dashboard gets its own copy, and the first keeps its link: syncing back stores nothing twice.
    other = live_server_factory()
    assert sync(other, trainer).returncode == 0 and only_run(other)["status"] == "finished"
    back = sync(server, trainer)
    assert back.returncode == 0, back.stderr
    assert f"0 new event(s), {len(in_file)} already there" in back.stdout and only_run(server)["id"] == run["id"]


def test_a_server_gone_mid_run_does_not_stop_training_and_sync_fills_the_gap(live_server_factory, trainers):
    server = live_server_factory()
    trainer, run_id = start_attached(server, trainers, demo_config(steps=150, eval_every=50))
    server.kill()
    assert trainer.wait() == 0, trainer.output()
    assert trainer.output().count("stopped answering") == 1
    server.start()
    before = server.run(run_id)
    assert before["status"] in ("running", "lost") and before["step"] < 150

    done = sync(server, trainer)
    assert done.returncode == 0, done.stderr
    run = server.wait_status(run_id, ("finished",), timeout=10)
    assert only_run(server)["id"] == run_id and run["step"] == 150
    in_file = trainer.file_events()
    assert [e["seq"] for e in stored_events(server, run_id)] == [e["seq"] for e in in_file]
    assert sum(map(len, series_points(server, run_id).values())) == point_count(in_file)


def test_a_two_process_torchrun_attached_run_registers_once(live_server_factory, trainers):
    server = live_server_factory()
    trainer = trainers(server.data_dir, demo_config(steps=6))
    trainer.start("--server", server.base_url, torchrun=2)
    assert trainer.wait() == 0, trainer.output()
    run = server.wait_status(only_run(server)["id"], ("finished",), timeout=30)
    assert run["attached"] is True and run["nproc"] == 2 and run["step"] == 6
    assert trainer.output().count("attached to the dashboard as run") == 1


def test_a_restarted_server_keeps_an_attached_run_running_and_receives_the_rest(live_server_factory, trainers):
    server = live_server_factory()
    trainer, run_id = start_attached(server, trainers, demo_config(steps=200, eval_every=100))
    server.kill()
    server.start()  # same port and database; there is no process of its own to re-adopt
    after = server.run(run_id)
    assert after["status"] == "running" and after["reason"] is None, after
    assert trainer.proc.poll() is None, "the restart must not touch the trainer"
    assert trainer.wait() == 0, trainer.output()
    run = server.wait_status(run_id, ("finished",), timeout=60)
    # the trainer's own retries delivered what the restart interrupted: no sync needed
    wait_until(lambda: len(stored_events(server, run_id)) == len(trainer.file_events()), 30, 0.5, "every event")
    assert [e["seq"] for e in stored_events(server, run_id)] == [e["seq"] for e in trainer.file_events()]
    assert run["step"] == 200


def test_attach_json_keeps_one_entry_per_server_and_reads_the_single_entry_of_older_versions(tmp_path):
    from trainer.attach import ATTACH_FILE, read_attachment, write_attachment

    (tmp_path / ATTACH_FILE).write_text(json.dumps({"server": "http://a:8000", "run_id": "r-a", "token": "ta"}))
    assert read_attachment(tmp_path, "http://a:8000")["run_id"] == "r-a"  # as cliplab wrote it before
    write_attachment(tmp_path, "http://b:8000", "r-b", "tb")
    assert read_attachment(tmp_path, "http://a:8000")["token"] == "ta"
    assert read_attachment(tmp_path, "http://b:8000")["run_id"] == "r-b"
    assert read_attachment(tmp_path, "http://c:8000") is None
    assert (tmp_path / ATTACH_FILE).stat().st_mode & 0o777 == 0o600


def test_a_copied_run_dir_resumed_by_hand_becomes_its_own_run_and_leaves_the_original_alone(live_server_factory,
                                                                                             trainers):
    server = live_server_factory()
    original = trainers(server.data_dir, demo_config(steps=3))
    assert original.run("--server", server.base_url).returncode == 0
    first = server.wait_status(only_run(server)["id"], ("finished",), timeout=30)
    fork = trainers(server.data_dir, demo_config(steps=3), name="fork")
    shutil.copytree(original.run_dir, fork.run_dir)  # `cp -r` to try something else from the same checkpoint
    resumed = fork.run("--resume", "latest", "--set", "train.steps=5", "--server", server.base_url)
    assert resumed.returncode == 0, resumed.stderr
    runs = {r["run_dir"]: r for r in server.get("/api/runs").json()["items"]}
    assert set(runs) == {str(original.run_dir), str(fork.run_dir)}, runs
    assert runs[str(original.run_dir)]["id"] == first["id"] and runs[str(original.run_dir)]["step"] == 3
    forked = server.wait_status(runs[str(fork.run_dir)]["id"], ("finished",), timeout=30)
    assert forked["step"] == 5
    # the original's token still works: its own sync is not refused
    assert sync(server, original).returncode == 0
    assert only_run_of(server, original.run_dir)["id"] == first["id"]


def only_run_of(server: Any, run_dir: Any) -> dict[str, Any]:
    found = [r for r in server.get("/api/runs").json()["items"] if r["run_dir"] == str(run_dir)]
    assert len(found) == 1, found
    return found[0]


def test_attach_json_entries_a_copied_dir_brought_along_are_ignored_but_a_moved_dir_keeps_them(tmp_path):
    from trainer.attach import read_attachment, write_attachment

    write_attachment(tmp_path / "a", "http://a:8000", "r-a", "ta")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    assert read_attachment(tmp_path / "copy", "http://a:8000") is None  # the original still holds that run
    assert read_attachment(tmp_path / "a", "http://a:8000")["run_id"] == "r-a"
    (tmp_path / "a").rename(tmp_path / "moved")
    assert read_attachment(tmp_path / "moved", "http://a:8000")["run_id"] == "r-a"


def test_a_moved_run_dir_resumed_by_hand_continues_its_run_and_sync_follows_it(live_server_factory, trainers):
    server = live_server_factory()
    trainer = trainers(server.data_dir, demo_config(steps=3))
    assert trainer.run("--server", server.base_url).returncode == 0
    first = server.wait_status(only_run(server)["id"], ("finished",), timeout=30)
    moved = trainer.run_dir.with_name("moved")
    trainer.run_dir.rename(moved)  # to a bigger disk, or a copy to another host with nothing left behind
    trainer.run_dir = moved
    resumed = trainer.run("--resume", "latest", "--set", "train.steps=5", "--server", server.base_url)
    assert resumed.returncode == 0 and "without the dashboard" not in resumed.stderr, resumed.stderr
    run = server.wait_status(first["id"], ("finished",), timeout=30)
    assert only_run(server)["id"] == first["id"] and run["run_dir"] == str(moved) and run["step"] == 5
    synced = sync(server, trainer)
    assert synced.returncode == 0 and "0 new event(s)" in synced.stdout, synced.stdout + synced.stderr
