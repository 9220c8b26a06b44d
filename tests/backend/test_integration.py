"""End to end: `cliplab serve` launching real `cliplab train` processes on the CPU demo config.

Runs are tiny (tiny-vit, batch 8, a few dozen steps) but everything is real: the subprocess server, SQLite,
the trainer's HTTP push and events.jsonl, SIGTERM/SIGKILL, a server killed and restarted.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.backend_fixtures import point_count, processes_under, wait_until

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

def tiny_config(steps: int) -> dict[str, Any]:
    cfg = yaml.safe_load((REPO / "contract" / "configs" / "cpu-demo.yaml").read_text())
    overrides = {
        "train": {"steps": steps, "batch_size": 8, "log_every": 1},
        "eval": {"every": 1000, "batch_size": 8, "max_samples": 16, "matrix_size": 4},
        "checkpoint": {"every": 4, "keep_last": 2},
        "data": {"num_workers": 1},  # as the demo: a stop must not kill the data-loader worker under it
        "optim": {"warmup_steps": 2},
    }
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def file_events(run: dict[str, Any]) -> list[dict[str, Any]]:
    lines = (Path(run["run_dir"]) / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def stored_events(server: Any, run_id: str) -> list[dict[str, Any]]:
    return server.get(f"/api/runs/{run_id}/events", params={"limit": 10_000}).json()["events"]


def stored_point_count(server: Any, run_id: str) -> int:
    names = server.get(f"/api/runs/{run_id}/metrics").json()["names"]
    series = server.get(f"/api/runs/{run_id}/series",
                        params={"names": ",".join(names), "buckets": 20_000}).json()
    assert series["downsampled"] is False
    return sum(len(s["step"]) for s in series["series"].values())


def assert_database_matches_events_file(server: Any, run: dict[str, Any]) -> None:
    in_file = file_events(run)
    in_db = stored_events(server, run["id"])
    assert [e["seq"] for e in in_db] == [e["seq"] for e in in_file]  # nothing lost, nothing twice
    assert point_count(in_file) == stored_point_count(server, run["id"]) > 0


def wait_step(server: Any, run_id: str, step: int, timeout: float = 180) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = server.run(run_id)
        assert run["status"] not in ("failed", "finished", "stopped"), run
        return run if run["step"] >= step else None

    return wait_until(reached, timeout, 0.5, f"run {run_id} to reach step {step}")


def test_run_trains_stops_with_a_checkpoint_and_resumes_from_it(live_server_factory):
    server = live_server_factory(max_cpu_runs=1, stop_grace_s=60)
    created = server.post("/api/runs", json={"name": "e2e", "config": tiny_config(steps=200), "tags": ["e2e"]})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    assert created.json()["status"] == "queued"
    server.wait_status(run_id, ("starting", "running"), 30)
    run = wait_step(server, run_id, 5)
    assert run["status"] == "running" and "loss" in run["latest"] and run["total_steps"] == 200
    assert server.client.delete(f"/api/runs/{run_id}").status_code == 409  # refused while it runs

    stopping = server.post(f"/api/runs/{run_id}/stop").json()
    assert stopping["status"] == "stopping"
    stopped = server.wait_status(run_id, ("stopped", "failed", "finished"), 120)
    assert stopped["status"] == "stopped" and stopped["exit_code"] == 0, stopped
    checkpoints = server.get(f"/api/runs/{run_id}/checkpoints").json()
    latest = [c for c in checkpoints if "latest" in c["kind"]]
    assert latest and latest[0]["step"] == stopped["step"] >= 5
    stop_step = stopped["step"]
    assert_database_matches_events_file(server, stopped)
    assert any("launch:" in line for line in server.get(f"/api/runs/{run_id}/logs").json()["lines"])

    resumed = server.post(f"/api/runs/{run_id}/resume", json={"overrides": {"train.steps": stop_step + 3}})
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued", resumed.text
    done = server.wait_status(run_id, ("finished", "failed", "stopped"), 180)
    assert done["status"] == "finished" and done["step"] == stop_step + 3, done
    events = file_events(done)
    restart = max(i for i, e in enumerate(events) if e["kind"] == "status" and e["status"] == "starting")
    after = [e["step"] for e in events[restart:] if e["kind"] == "metric"]
    assert after and after[0] == stop_step + 1  # continued from the checkpoint, not from scratch
    assert_database_matches_events_file(server, done)
    assert server.get(f"/api/runs/{run_id}/evals").json()  # the final eval arrived
    assert server.get(f"/api/runs/{run_id}/matrices").json()


def test_server_killed_mid_run_readopts_the_trainer_and_loses_no_event(live_server_factory):
    server = live_server_factory(max_cpu_runs=1)
    run_id = server.post("/api/runs", json={"config": tiny_config(steps=14)}).json()["id"]
    wait_step(server, run_id, 2)
    server.kill()  # a crash: no shutdown code runs, the trainer keeps training and writing its file
    time.sleep(4)
    still_training = bool(processes_under(server.data_dir))
    server.start()
    run = server.run(run_id)
    assert run["status"] == ("running" if still_training else "finished"), run  # re-adopted, not written off
    assert "re-adopted" in server.log() or not still_training
    done = server.wait_status(run_id, ("finished", "failed", "stopped"), 240)
    assert done["status"] == "finished", done
    assert_database_matches_events_file(server, done)


def _parent(pid: int) -> int:
    # /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after its ')'.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_trainer_killed_with_sigkill_ends_failed_with_a_reason(live_server_factory):
    server = live_server_factory(max_cpu_runs=1)
    run = server.post("/api/runs", json={"config": tiny_config(steps=200)}).json()
    wait_step(server, run["id"], 1)
    trainers = [p for p in processes_under(server.data_dir)
                if run["run_dir"].encode() in Path(f"/proc/{p}/cmdline").read_bytes()]
    leaders = [p for p in trainers if _parent(p) not in trainers]  # not its data-loader workers
    assert len(leaders) == 1
    os.kill(leaders[0], signal.SIGKILL)
    done = server.wait_status(run["id"], ("failed", "lost", "finished", "stopped"), 60)
    assert done["status"] == "failed" and "SIGKILL" in done["reason"], done
    assert done["exit_code"] == -signal.SIGKILL
    # the next queued run gets the freed CPU slot
    nxt = server.post("/api/runs", json={"config": tiny_config(steps=1)}).json()
    server.wait_status(nxt["id"], ("starting", "running", "finished"), 30)
    server.post(f"/api/runs/{nxt['id']}/stop")
