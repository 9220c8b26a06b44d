"""Launcher decisions (GPU queue, command lines, final states) and real process-group signalling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from backend.models import Run
from backend.services.executors.local import (
    kill_stragglers,
    pid_alive,
    pid_is_trainer,
    send_signal,
    trainer_command,
)
from backend.services.launcher import end_time, final_state, plan_launches, trainer_env
from contract.events import STOP_REQUESTED_REASON

from tests.backend_fixtures import wait_until


def test_queue_hands_out_free_gpus_first_fit_and_limits_cpu_runs():
    queued = [("big", 4), ("two", 2), ("cpu1", 0), ("one", 1), ("cpu2", 0), ("also-two", 2)]
    plan = dict(plan_launches(queued, busy_devices={1}, gpu_indices=[0, 1, 2, 3], cpu_active=0, max_cpu_runs=1))
    # GPU 1 is busy: 4 GPUs do not fit, the 2-GPU run takes 0 and 2, the 1-GPU run takes 3, nothing is left
    assert plan == {"two": [0, 2], "cpu1": [], "one": [3]}
    assert plan_launches([("a", 0)], set(), [], cpu_active=1, max_cpu_runs=1) == []
    assert plan_launches([("a", 1)], set(), [], cpu_active=0, max_cpu_runs=1) == []
    assert plan_launches([("a", 0), ("b", 0), ("c", 0)], set(), [], 0, 2) == [("a", []), ("b", [])]


def test_trainer_commands_are_argument_lists_and_torchrun_runs_as_a_module(tmp_path):
    cfg, run_dir = tmp_path / "config.yaml", tmp_path / "run dir; rm -rf ~"  # a shell would split this
    one = trainer_command(cfg, run_dir, nproc=1, resume=False)
    assert one == [sys.executable, "-m", "trainer", "train", str(cfg), "--run-dir", str(run_dir)]
    many = trainer_command(cfg, run_dir, nproc=4, resume=True)
    assert many[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert many[many.index("--nproc_per_node") + 1] == "4"
    assert many[-8:] == ["-m", "trainer", "train", str(cfg), "--run-dir", str(run_dir), "--resume", "latest"]


def test_trainer_env_carries_run_identity_devices_and_stop_grace_but_not_server_secrets(tmp_path):
    base = {"PATH": "/bin", "CLIPLAB_TOKEN": "server-secret", "DATABASE_URL": "postgresql://u:pw@h/db"}
    env = trainer_env(base, "http://127.0.0.1:9", "r-1", "tok", tmp_path, [2, 3], stop_grace_s=120)
    assert env["CLIPLAB_SERVER"] == "http://127.0.0.1:9" and env["CLIPLAB_RUN_ID"] == "r-1"
    assert env["CLIPLAB_RUN_TOKEN"] == "tok" and env["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert env["CLIPLAB_DATA_DIR"] == str(tmp_path) and env["PATH"] == "/bin"
    assert "CLIPLAB_TOKEN" not in env and "DATABASE_URL" not in env
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "120"  # torchrun waits as long for a stop checkpoint
    assert trainer_env(base, "u", "r", "t", tmp_path, [], 60)["CUDA_VISIBLE_DEVICES"] == ""  # CPU run sees no GPU


def test_final_state_follows_exit_code_and_last_status_event():
    assert final_state(0, "finished", None, False) == ("finished", None)
    assert final_state(0, "stopped", "received SIGTERM", True) == ("stopped", STOP_REQUESTED_REASON)
    assert final_state(0, "stopped", "received SIGTERM", False) == ("stopped", "received SIGTERM")  # not ours
    assert final_state(1, "failed", "CUDA out of memory", False) == ("failed", "CUDA out of memory")
    assert final_state(2, None, None, False)[0] == "failed"
    assert "code 2" in final_state(2, None, None, False)[1]
    status, reason = final_state(-9, "running", None, False)
    assert status == "failed" and "SIGKILL" in reason
    status, reason = final_state(-9, "running", None, True)
    assert status == "stopped" and "grace" in reason
    assert final_state(1, "stopped", None, True) == ("stopped", STOP_REQUESTED_REASON)  # torchrun after a stop
    assert final_state(None, "finished", None, False) == ("finished", None)  # adopted: events decide
    assert final_state(None, "running", None, False, "gone")[0:2] == ("failed", "gone")


def _sleeper(tmp_path: Path, ignore_term: bool) -> subprocess.Popen:
    code = ("import signal, time\n"
            + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_term else "")
            + "print('ready', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "trainer", str(tmp_path)], start_new_session=True,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # its signal handling is in place
    return proc


def test_process_checks_recognise_our_trainer_and_signal_its_whole_group(tmp_path):
    proc = _sleeper(tmp_path, ignore_term=False)
    try:
        assert pid_alive(proc.pid)
        assert pid_is_trainer(proc.pid, str(tmp_path))
        assert not pid_is_trainer(proc.pid, str(tmp_path / "other-run"))
        assert send_signal(proc.pid, signal.SIGTERM, whole_group=True)
        assert proc.wait(10) == -signal.SIGTERM
        assert not pid_alive(proc.pid) and not send_signal(proc.pid, signal.SIGTERM, whole_group=True)
    finally:
        proc.kill()


def test_stop_sends_sigterm_then_sigkill_after_the_grace_period(app_server_factory, tmp_path):
    server = app_server_factory(stop_grace_s=1.0, poll_s=0.1)
    run_id = server.client.post("/api/runs", json={"config": {}}).json()["id"]

    def running(session):
        run = session.get(Run, run_id)
        run.status = "running"
        session.add(run)

    server.services.writer.call(running)
    proc = _sleeper(tmp_path, ignore_term=True)  # a trainer that does not react to SIGTERM
    try:
        server.services.launcher.adopt(run_id, proc.pid)
        started = time.monotonic()
        r = server.client.post(f"/api/runs/{run_id}/stop")
        assert r.status_code == 200 and r.json()["status"] == "stopping"
        time.sleep(0.5)
        assert proc.poll() is None  # SIGTERM ignored, still inside the grace period
        run = wait_until(lambda: (lambda r: r if r["status"] != "stopping" else None)(
            server.client.get(f"/api/runs/{run_id}").json()), 15, what="the stop to complete")
        assert proc.wait(5) == -signal.SIGKILL
        assert time.monotonic() - started >= 1.0
        assert run["status"] == "stopped" and run["reason"]
        # a finished run cannot be stopped again, and its token is gone
        assert server.client.post(f"/api/runs/{run_id}/stop").status_code == 409
    finally:
        proc.kill()
        proc.wait()


def test_nvidia_smi_csv_is_parsed_and_each_gpu_names_the_run_holding_it(app_server_factory):
    from backend.services.system import parse_gpu_csv

    out = "0, NVIDIA H100 80GB HBM3, 81559, 1024, 37\n1, NVIDIA H100 80GB HBM3, 81559, [N/A], 0\nwarning: x\n"
    gpus = parse_gpu_csv(out)
    assert gpus == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total": 81559.0, "memory_used": 1024.0,
         "utilization": 37.0},
        {"index": 1, "name": "NVIDIA H100 80GB HBM3", "memory_total": 81559.0, "memory_used": None,
         "utilization": 0.0},
    ]
    # A server told it has GPUs 0 and 1 validates GPU requests against them and reports who holds which.
    server = app_server_factory(gpus=[0, 1])
    assert server.client.post("/api/runs", json={"config": {}, "gpus": 3}).json()["detail"][0]["field"] == "gpus"
    assert server.client.post("/api/runs", json={"config": {}, "gpus": 2, "nproc": 1}).status_code == 422
    run_id = server.client.post("/api/runs", json={"config": {}}).json()["id"]

    def holds_gpu_1(session):
        run = session.get(Run, run_id)
        run.status, run.devices = "running", [1]
        session.add(run)

    server.services.writer.call(holds_gpu_1)
    assert server.services.launcher.holders() == {1: run_id}
    info = server.client.get("/api/system").json()
    assert info["launcher"]["gpu_indices"] == [0, 1]


def test_stragglers_of_a_finished_run_are_killed_but_only_those_naming_its_run_dir(tmp_path):
    run_dir = str(tmp_path / "run")
    child = "import time; time.sleep(120)"
    quiet = "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL"
    leader = (f"import subprocess, sys; a = subprocess.Popen([sys.executable, '-c', {child!r}, {run_dir!r}], {quiet}); "
              f"b = subprocess.Popen([sys.executable, '-c', {child!r}, 'unrelated'], {quiet}); print(a.pid, b.pid)")
    out = subprocess.run([sys.executable, "-c", leader, run_dir], start_new_session=True, capture_output=True,
                         text=True, timeout=30)
    ours, other = map(int, out.stdout.split())
    leader_pid = os.getpgid(ours)
    try:
        assert pid_alive(ours) and pid_alive(other) and os.getpgid(other) == leader_pid
        assert kill_stragglers(leader_pid, run_dir) == 1
        wait_until(lambda: not pid_alive(ours), 10, what="the straggler to die")
        assert pid_alive(other)
    finally:
        for pid in (ours, other):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_end_time_is_the_final_status_event_of_this_attempt_else_now():
    now, started = 10_000.0, 9_000.0
    finished = {"seq": 9, "time": 9_500.0, "kind": "status", "status": "finished"}
    assert end_time(finished, started, now) == 9_500.0
    assert end_time({**finished, "status": "failed"}, started, now) == 9_500.0
    assert end_time({**finished, "status": "running"}, started, now) == now  # it died without a final word
    assert end_time({**finished, "time": 8_000.0}, started, now) == now  # an earlier attempt's ending
    assert end_time({**finished, "time": 20_000.0}, started, now) == now  # a clock from the future
    assert end_time(None, started, now) == now


def test_a_run_that_finished_while_the_server_was_down_keeps_its_own_finish_time(app_server_factory):
    server = app_server_factory(tail_every_s=3600)
    run_id = server.client.post("/api/runs", json={"config": {}}).json()["id"]
    started = time.time() - 3600  # it started an hour ago and finished 10 minutes later; the server was down

    def running(session):
        run = session.get(Run, run_id)
        run.status, run.started_at, run.pid = "running", started, None
        session.add(run)
        return run.run_dir

    run_dir = Path(server.services.writer.call(running))
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"seq": 0, "time": started + 1, "kind": "status", "status": "running", "step": 0, "total_steps": 10},
             {"seq": 1, "time": started + 600, "kind": "status", "status": "finished", "step": 10}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    server.services.launcher.reconcile()  # what a restarted server does first
    run = server.client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "finished" and run["step"] == 10
    assert run["finished_at"] == started + 600
