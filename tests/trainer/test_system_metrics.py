"""System metrics: the sampling thread, the trainer's `system` events, and the backend storing and serving them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backend.models import Run
from contract.events import read_events
from trainer.system_metrics import SystemMonitor, visible_gpu_ids

from tests.backend.test_ingest import _running_with_token
from tests.backend_fixtures import wait_until
from tests.train_support import REPO, make_dataset, read_metrics, run_trainer, tiny_config, train_env, write_config


def _collect(interval_s: float, samples: int, emit_error: Exception | None = None) -> tuple[list[dict], list[str]]:
    got: list[dict] = []
    warnings: list[str] = []

    def emit(values: dict) -> None:
        got.append(values)
        if emit_error is not None:
            raise emit_error

    monitor = SystemMonitor(emit, interval_s, warnings.append).start()
    wait_until(lambda: len(got) >= samples, 30, 0.02, f"{samples} system samples")
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 2.0, "stop() must not wait for the next interval"
    assert not monitor._thread.is_alive()
    return got, warnings


def test_monitor_reports_process_and_host_cpu_and_memory():
    # CPU work in this process for the whole sampling window (not a fixed amount a loaded machine may
    # finish before, or start after, the samples), so they have something to measure.
    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            sum(i * i for i in range(10_000))

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    try:
        samples, warnings = _collect(0.05, 5)
    finally:
        done.set()
        worker.join()
    last = samples[-1]
    assert warnings == []
    assert all(name.startswith("sys/") for name in last)
    assert last["sys/rss_gib"] > 10 / 1024  # a Python process with torch imported holds well over 10 MiB
    assert 0 < last["sys/host_memory_available_gib"] and 0 < last["sys/host_memory_used_gib"]
    assert last["sys/host_memory_used_gib"] + last["sys/host_memory_available_gib"] > last["sys/rss_gib"]
    assert max(s["sys/cpu_percent"] for s in samples) > 0
    assert all(0 <= s["sys/host_cpu_percent"] <= 100 for s in samples)


def test_a_failing_sample_warns_once_and_the_thread_goes_on():
    samples, warnings = _collect(0.02, 4, emit_error=RuntimeError("database away"))
    assert len(samples) >= 4  # it kept sampling after the first failure
    assert len(warnings) == 1 and "database away" in warnings[0]


def test_without_psutil_or_nvml_nothing_is_reported_and_nothing_breaks():
    code = (
        "import sys, time\n"
        "sys.modules['psutil'] = None; sys.modules['pynvml'] = None  # as if neither were installed\n"
        "from trainer.system_metrics import SystemMonitor\n"
        "got = []\n"
        "m = SystemMonitor(got.append, 0.01).start(); time.sleep(0.3); m.stop()\n"
        "assert got == [] and not m._thread.is_alive(), got\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_no_gpu_fields_where_nvml_has_no_driver_or_device():
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("NVML works on this machine; this test is about machines without it")
    except pynvml.NVMLError:
        pass
    samples, _ = _collect(0.02, 2)
    assert samples[-1] and not any("/gpu" in name for name in samples[-1])


def test_gpus_are_the_runs_cuda_devices_in_cuda_visible_devices_order():
    assert visible_gpu_ids(None, 3) == [0, 1, 2]
    assert visible_gpu_ids("", 8) == []  # a CPU run the launcher hid every GPU from
    assert visible_gpu_ids("3,1", 8) == [3, 1]  # sys/gpu0 is cuda:0 of the run = physical GPU 3
    assert visible_gpu_ids("GPU-8a1b, 2", 8) == ["GPU-8a1b", 2]
    assert visible_gpu_ids("2,bogus,3", 8) == [2]  # CUDA ignores everything from the first bad entry


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sysdata") / "shapes")


@pytest.mark.slow  # a real trainer run
def test_trainer_emits_system_events_during_training_and_none_after_its_final_status(tmp_path, data_root):
    cfg = tiny_config(data_root, train={"steps": 30, "system_every_s": 0.1}, eval={"every": 15})
    run_dir = tmp_path / "run"
    done = run_trainer([str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)], train_env(tmp_path))
    assert done.returncode == 0, done.stderr
    events = list(read_events(run_dir / "events.jsonl"))
    system = [e for e in events if e["kind"] == "system"]
    assert len(system) >= 2, [e["kind"] for e in events]
    final = max(e["seq"] for e in events if e["kind"] == "status")
    assert all(e["seq"] < final for e in system)
    assert all(isinstance(e["step"], int) and 0 <= e["step"] <= 30 for e in system)
    assert {"sys/cpu_percent", "sys/rss_gib", "sys/host_memory_available_gib"} <= set(system[-1]["values"])
    # only the training metrics go to metrics.csv
    assert not any(k.startswith("sys/") for k in read_metrics(run_dir / "metrics.csv")[0])


@pytest.mark.slow  # a real trainer run
def test_system_every_s_zero_turns_the_thread_off(tmp_path, data_root):
    cfg = tiny_config(data_root, train={"steps": 4, "system_every_s": 0})
    run_dir = tmp_path / "run"
    done = run_trainer([str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)], train_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert not [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "system"]


def _running_run(server) -> tuple[str, str]:
    """A running run with its trainer token, last heard from long ago."""
    run_id, token = _running_with_token(server)

    def job(session):
        session.get(Run, run_id).last_seen = 1.0

    server.services.writer.call(job)
    return run_id, token


def _system(seq: int, step: int, **values: float) -> dict:
    return {"seq": seq, "time": 1000.0 + seq, "kind": "system", "step": step,
            "values": {f"sys/{k}": v for k, v in values.items()}}


def test_backend_stores_system_events_as_series_but_not_as_run_summaries(app_server):
    run_id, token = _running_run(app_server)
    auth = {"Authorization": f"Bearer {token}"}
    events = [
        {"seq": 0, "time": 1000.0, "kind": "metric", "step": 10, "values": {"loss": 2.0}},
        _system(1, 10, cpu_percent=150.0, rss_gib=2.0),
        _system(2, 10, cpu_percent=90.0, rss_gib=2.1),  # a long eval: several samples at one step
        _system(3, 12, cpu_percent=120.0, rss_gib=2.2),
    ]
    r = app_server.client.post(f"/api/runs/{run_id}/events", json={"events": events}, headers=auth)
    assert r.json() == {"accepted": 4, "duplicates": 0, "uncharted": []}
    names = app_server.client.get(f"/api/runs/{run_id}/metrics").json()["names"]
    assert names == ["loss", "sys/cpu_percent", "sys/rss_gib"]
    series = app_server.client.get(f"/api/runs/{run_id}/series?names=sys/cpu_percent").json()["series"]
    assert series["sys/cpu_percent"]["step"] == [10, 10, 12]
    assert series["sys/cpu_percent"]["last"] == [150.0, 90.0, 120.0]
    run = app_server.client.get(f"/api/runs/{run_id}").json()
    assert run["latest"] == {"loss": 2.0} and run["step"] == 12
    bad = app_server.client.post(f"/api/runs/{run_id}/events", headers=auth, json={"events": [
        {"seq": 9, "time": 1.0, "kind": "system", "values": {"sys/cpu_percent": "high"}}]})
    assert bad.status_code == 422
    fields = {e["field"] for e in bad.json()["detail"]}
    assert fields == {"events[0].values.sys/cpu_percent", "events[0].step"}


def test_system_events_alone_do_not_keep_a_hung_run_from_being_lost(app_server):
    # The sampling thread runs on while a training loop hangs: only the loop's own events count as news.
    run_id, token = _running_run(app_server)
    auth = {"Authorization": f"Bearer {token}"}
    app_server.client.post(f"/api/runs/{run_id}/events", json={"events": [_system(0, 5, cpu_percent=100.0)]},
                           headers=auth).raise_for_status()
    seen = app_server.services.read(lambda s: s.get(Run, run_id).last_seen)
    assert seen == 1.0
    app_server.client.post(f"/api/runs/{run_id}/events", headers=auth, json={"events": [
        {"seq": 1, "time": 1001.0, "kind": "heartbeat", "step": 6, "total_steps": 100}]}).raise_for_status()
    assert app_server.services.read(lambda s: s.get(Run, run_id).last_seen) > 1000
