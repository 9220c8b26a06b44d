"""`python -m trainer train` as a real process: SIGTERM, failures, bad configs, torchrun with two ranks."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import yaml

from contract.events import read_events
from trainer.training.checkpoint_folder import CheckpointFolder, load_train_state

from tests.train_support import (
    REPO,
    make_dataset,
    read_metrics,
    run_trainer,
    tiny_config,
    train_env,
    trainer_command,
    write_config,
)

pytestmark = pytest.mark.slow  # real trainer processes, under torchrun too


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return train_env(tmp_path_factory.mktemp("cliplab-data"))


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"trainer exited with {proc.returncode} while waiting for {what}:\n{out}\n{err}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _signal_a_run(cfg: dict, env: dict[str, str], tmp_path, after_step: int,
                  send: Callable[[subprocess.Popen], None]) -> tuple[int, str, Path]:
    """Start a trainer in its own process group, `send(proc)` once it logged `after_step`, wait for it to end.
    Returns (exit status, stderr, run dir)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(trainer_command(str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)),
                            env=env, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        events = run_dir / "events.jsonl"
        _wait_for(lambda: any(e["kind"] == "metric" and e["step"] >= after_step for e in read_events(events)), 120,
                  f"step {after_step} to be logged", proc)
        send(proc)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.returncode, err, run_dir


def test_sigterm_to_the_process_group_saves_a_checkpoint_reports_stopped_and_exits_0(data, env, tmp_path):
    # As the launcher stops a run: SIGTERM to the whole group, data-loader workers included.
    cfg = tiny_config(data, data={"val": None, "num_workers": 2},
                      train={"batch_size": 8, "steps": 100000, "log_every": 1},
                      checkpoint={"every": 100000})
    returncode, err, run_dir = _signal_a_run(cfg, env, tmp_path, 2, lambda proc: os.killpg(proc.pid, signal.SIGTERM))
    assert returncode == 0, err
    evs = list(read_events(run_dir / "events.jsonl"))
    last = evs[-1]
    assert last["kind"] == "status" and last["status"] == "stopped" and last["reason"] == "received SIGTERM"
    assert last["total_steps"] == 100000 and last["step"] >= 2
    latest = CheckpointFolder(run_dir).pointer("latest")
    assert latest is not None and latest.name == f"step_{last['step']:06d}"
    assert load_train_state(latest)["step"] == last["step"]
    ckpt = [e for e in evs if e["kind"] == "checkpoint"]
    assert ckpt and ckpt[-1]["path"] == f"checkpoints/{latest.name}"


def test_a_failure_during_the_run_reports_failed_with_reason_and_traceback_and_exits_1(tmp_path, env, data):
    # The one readable image passes the start-up probe; the run then meets only unreadable batches.
    readable = data / (data / "train.csv").read_text().splitlines()[1].split(",")[0]
    (tmp_path / "train.csv").write_text(f"filepath,caption\n{readable},a cat\n"
                                        + "".join(f"missing{i}.jpg,a cat\n" for i in range(1000)))
    cfg = tiny_config(tmp_path, data={"val": None})
    run_dir = tmp_path / "run"
    result = run_trainer([str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)], env, timeout=120)
    assert result.returncode == 1, result.stderr
    evs = list(read_events(run_dir / "events.jsonl"))
    assert evs[-1]["kind"] == "status" and evs[-1]["status"] == "failed"
    assert "no readable image" in evs[-1]["reason"] and ": file not found" in evs[-1]["reason"]
    tracebacks = [e for e in evs if e["kind"] == "log" and e["level"] == "error"]
    assert tracebacks and "Traceback" in tracebacks[-1]["message"]


def test_a_closed_stdout_does_not_fail_the_run(tmp_path, env, data):
    # `cliplab train ... | head` (or a `tee` that died): the next log line raised BrokenPipeError, the run
    # ended `failed` and the steps since the last checkpoint were lost. Training goes on; events.jsonl keeps all.
    cfg = tiny_config(data, data={"val": None}, train={"batch_size": 8, "steps": 4, "log_every": 1},
                      checkpoint={"every": 100})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(trainer_command(str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)),
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()  # the first line, as `| head -1` reads it, then the reader is gone
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    evs = list(read_events(run_dir / "events.jsonl"))
    assert evs[-1]["kind"] == "status" and evs[-1]["status"] == "finished", evs[-1]
    assert [e["step"] for e in evs if e["kind"] == "metric"] == [1, 2, 3, 4]
    assert any(e["kind"] == "log" and "stdout can no longer be written" in e["message"] for e in evs)
    assert "BrokenPipeError" not in err
    assert CheckpointFolder(run_dir).pointer("latest").name == "step_000004"


def test_an_invalid_override_exits_2_naming_the_field_and_only_a_launched_run_records_it(tmp_path, env, data):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(data))
    run_dir = tmp_path / "run"
    # By hand: a message, and no run directory made for a typo.
    result = run_trainer([str(cfg), "--set", "optim.lr=-1", "--run-dir", str(run_dir)], env, timeout=60)
    assert result.returncode == 2
    assert "optim.lr (from --set)" in result.stderr
    assert not run_dir.exists()
    # Launched by the backend (which made the directory): the run's page must say why it did not start.
    run_dir.mkdir()
    launched = {**env, "CLIPLAB_RUN_ID": "r-1"}
    result = run_trainer([str(cfg), "--set", "optim.lr=-1", "--run-dir", str(run_dir)], launched, timeout=60)
    assert result.returncode == 2
    evs = list(read_events(run_dir / "events.jsonl"))
    assert evs[-1]["status"] == "failed" and "optim.lr" in evs[-1]["reason"]


def test_bad_data_found_while_building_exits_2_naming_the_field_without_a_traceback(tmp_path, env, data):
    path, caption = (data / "val.csv").read_text().splitlines()[1].split(",")[:2]
    (tmp_path / "val.csv").write_text(f"filepath,caption\n{data / path},{caption}\n")
    cfg = write_config(tmp_path / "c.yaml", tiny_config(data, data={"val": str(tmp_path / "val.csv")}))
    run_dir = tmp_path / "run"
    result = run_trainer([str(cfg), "--run-dir", str(run_dir)], env, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "data.val" in result.stderr and "at least 2" in result.stderr and "Traceback" not in result.stderr
    assert not run_dir.exists()  # by hand: fix the config and use the same --run-dir
    run_dir.mkdir()  # as the launcher leaves it
    launched = run_trainer([str(cfg), "--run-dir", str(run_dir)], {**env, "CLIPLAB_RUN_ID": "r-1"}, timeout=120)
    assert launched.returncode == 2
    last = list(read_events(run_dir / "events.jsonl"))[-1]
    assert last["status"] == "failed" and last["reason"].startswith("data.val")


def test_a_new_run_never_overwrites_a_run_directory_and_a_changed_resume_is_flagged(tmp_path, env, data):
    cfg = write_config(tmp_path / "c.yaml", tiny_config(data, data={"val": None},
                                                         train={"steps": 2}, checkpoint={"every": 2}))
    run_dir = tmp_path / "run"
    assert run_trainer([str(cfg), "--run-dir", str(run_dir)], env, timeout=120).returncode == 0
    before = {name: (run_dir / name).read_bytes() for name in ("events.jsonl", "metrics.csv", "config.yaml")}

    again = run_trainer([str(cfg), "--run-dir", str(run_dir)], env, timeout=120)
    assert again.returncode == 2
    assert "already holds a run" in again.stderr and "--resume latest" in again.stderr
    assert {name: (run_dir / name).read_bytes() for name in before} == before  # nothing touched

    # A resume with an override that cannot work fails before touching the run (and its config.yaml).
    bad = run_trainer(["--run-dir", str(run_dir), "--resume", "latest", "--set", f"data.train={tmp_path}/gone.csv"],
                      env, timeout=120)
    assert bad.returncode == 2 and "data.train" in bad.stderr
    assert {name: (run_dir / name).read_bytes() for name in before} == before

    resumed = run_trainer(["--run-dir", str(run_dir), "--resume", "latest", "--set", "train.steps=3",
                           "--set", "train.batch_size=4"], env, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    warnings = [e["message"] for e in read_events(run_dir / "events.jsonl")
                if e["kind"] == "log" and e["level"] == "warning"]
    assert any("train.batch_size 8 -> 4" in m and "not step-exact" in m for m in warnings), warnings


def test_a_second_ctrl_c_interrupts_at_once_and_still_ends_the_run_with_a_status(data, env, tmp_path):
    # Long steps (8 accumulated micro-batches), so the second Ctrl-C lands inside the step the first one ends.
    cfg = tiny_config(data, data={"val": None},
                      train={"batch_size": 32, "accum_steps": 8, "steps": 100000, "log_every": 1},
                      checkpoint={"every": 100000})

    def ctrl_c_twice(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)  # two signals at once would merge into one
        proc.send_signal(signal.SIGINT)

    returncode, err, run_dir = _signal_a_run(cfg, env, tmp_path, 1, ctrl_c_twice)
    assert returncode == 130, err
    last = list(read_events(run_dir / "events.jsonl"))[-1]
    assert last["kind"] == "status" and last["status"] == "stopped" and "interrupted" in last["reason"]


def test_torchrun_two_ranks_on_cpu_finish_with_one_event_stream_from_rank_0(data, env, tmp_path):
    cfg = tiny_config(data, train={"batch_size": 4, "accum_steps": 2, "steps": 4, "log_every": 1},
                      eval={"every": 4, "batch_size": 8, "matrix_size": 4}, checkpoint={"every": 2})
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer", "train", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    evs = list(read_events(run_dir / "events.jsonl"))
    assert [e["seq"] for e in evs] == list(range(len(evs)))
    assert [e["status"] for e in evs if e["kind"] == "status"] == ["starting", "running", "finished"]
    assert [e["step"] for e in evs if e["kind"] == "metric"] == [1, 2, 3, 4]
    assert [e["step"] for e in evs if e["kind"] == "eval"] == [4]
    assert len([e for e in evs if e["kind"] == "matrix"]) == 1
    assert "world size 2; global batch 16" in "".join(e.get("message", "") for e in evs if e["kind"] == "log")
    assert [r["step"] for r in read_metrics(run_dir / "metrics.csv")] == ["1", "2", "3", "4"]
    state = load_train_state(CheckpointFolder(run_dir).pointer("latest"))
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert json.loads((run_dir / "checkpoints" / "step_000004" / "model.json").read_text())


def test_sigterm_to_a_torchrun_job_stops_every_rank_at_the_same_step_with_a_checkpoint(data, env, tmp_path):
    # The launcher signals the whole process group (torchrun and its workers), as here.
    cfg = tiny_config(data, data={"val": None, "num_workers": 1},
                      train={"batch_size": 4, "steps": 100000, "log_every": 2}, checkpoint={"every": 100000})
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "trainer", "train", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: any(e["kind"] == "metric" and e["step"] >= 2 for e in read_events(run_dir / "events.jsonl")),
                  180, "two logged steps", proc)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # torchrun itself exits 1 after a SIGTERM (its agent raises SignalException); the workers stopped cleanly,
    # which is what the last status event records.
    evs = list(read_events(run_dir / "events.jsonl"))
    assert evs[-1]["kind"] == "status" and evs[-1]["status"] == "stopped", evs[-3:]
    step = evs[-1]["step"]
    assert step % 2 == 0  # ranks agree on a log boundary
    state = load_train_state(CheckpointFolder(run_dir).pointer("latest"))
    assert state["step"] == step and len(state["rng"]) == 2


def test_runs_of_one_name_started_together_each_get_their_own_folder(tmp_path, env, data):
    # A sweep from a shell loop: `for lr in ...; do cliplab train cfg --set optim.lr=$lr & done`. The folder
    # name has one-second resolution, and two runs once shared (and interleaved) one.
    runs = tmp_path / "runs"
    cfg = write_config(tmp_path / "c.yaml", {**tiny_config(data, train={"steps": 3}, data={"val": None}),
                                              "name": "sweep", "output_dir": str(runs)})
    procs = [subprocess.Popen(trainer_command(str(cfg), "--set", f"optim.lr={lr}"), env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for lr in (1e-3, 2e-3, 3e-3)]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err
    folders = sorted(p for p in runs.iterdir() if p.is_dir())
    assert len(folders) == 3 and all(p.name.startswith("sweep-") for p in folders)
    lrs = set()
    for folder in folders:
        seqs = [e["seq"] for e in read_events(folder / "events.jsonl")]
        assert len(seqs) == len(set(seqs)), f"{folder.name} holds two runs' events"
        lrs.add(yaml.safe_load((folder / "config.yaml").read_text())["optim"]["lr"])
    assert lrs == {1e-3, 2e-3, 3e-3}


def test_a_run_that_bad_input_stops_leaves_no_folder_it_claimed(tmp_path, env, data):
    runs = tmp_path / "runs"
    path, caption = (data / "val.csv").read_text().splitlines()[1].split(",")[:2]
    (tmp_path / "val.csv").write_text(f"filepath,caption\n{data / path},{caption}\n")  # one pair: unusable
    cfg = write_config(tmp_path / "c.yaml", {**tiny_config(data, data={"val": str(tmp_path / "val.csv")}),
                                              "output_dir": str(runs)})
    result = run_trainer([str(cfg)], env, timeout=120)
    assert result.returncode == 2 and "data.val" in result.stderr
    assert runs.is_dir() and list(runs.iterdir()) == []


def test_a_second_training_in_a_run_dir_that_is_training_is_refused(tmp_path, env, data):
    # `--resume latest` typed in a second terminal while the run still trains: both would write one folder.
    cfg = write_config(tmp_path / "c.yaml", tiny_config(data, data={"val": None},
                                                        train={"steps": 100000, "log_every": 1},
                                                        checkpoint={"every": 2, "keep_last": 10_000}))
    run_dir = tmp_path / "run"
    first = subprocess.Popen(trainer_command(str(cfg), "--run-dir", str(run_dir)), env=env, cwd=REPO,
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (run_dir / "checkpoints" / "latest").exists(), 120, "a first checkpoint", first)
        second = run_trainer(["--run-dir", str(run_dir), "--resume", "latest"], env, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"run directory {run_dir} is in use by another training (pid {first.pid} on" in second.stderr
        assert first.poll() is None  # the first one trains on
        os.killpg(first.pid, signal.SIGTERM)
        _, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    events = list(read_events(run_dir / "events.jsonl"))
    seqs = [e["seq"] for e in events]
    assert len(seqs) == len(set(seqs)) and events[-1]["status"] == "stopped"
    resumed = run_trainer(["--run-dir", str(run_dir), "--resume", "latest", "--set", "train.steps=1"], env,
                          timeout=120)  # the lock went with the first process
    assert "in use" not in resumed.stderr
