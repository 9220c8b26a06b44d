"""The command line as a user meets it: progress (a bar on a terminal, plain lines with rate and ETA when piped),
the closing summary, bundled configs by name from any folder, `cliplab configs`, `cliplab runs` on a runs folder
and on a server. Real trainer subprocesses, a real pseudo-terminal, a real server."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from contract.config import bundled_configs
from trainer.events import EventWriter

from tests.backend.test_ingest import _post, _running_with_token
from tests.train_support import make_dataset, tiny_config, train_env, write_config

pytestmark = pytest.mark.slow


def cliplab(*args: str, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def run_in_terminal(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> tuple[int, str]:
    """Run `cliplab ARGS` with stdout and stderr on a pseudo-terminal; returns (exit code, what it drew)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal)
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    data = os.read(controller, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=30), b"".join(chunks).decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("clidata") / "shapes")


def _config(tmp_path: Path, data_root: Path, steps: int = 8) -> Path:
    cfg = tiny_config(data_root, train={"steps": steps, "log_every": 2, "system_every_s": 0}, eval={"every": 4})
    return write_config(tmp_path / "c.yaml", cfg)


def test_piped_output_is_plain_lines_with_rate_and_eta_then_a_summary(tmp_path, data_root):
    run_dir = tmp_path / "run"
    done = cliplab("train", str(_config(tmp_path, data_root)), "--run-dir", str(run_dir), cwd=tmp_path,
                   env=train_env(tmp_path))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "\r" not in out and "\r" not in done.stderr  # no bar redrawn in a log file
    steps = re.findall(r"^step (\d+)/8 \|.*\| ([\d.]+) steps/s \| ETA (\S+)$", out, re.MULTILINE)
    assert [int(s) for s, _, _ in steps] == [2, 4, 6, 8] and all(float(r) > 0 for _, r, _ in steps)
    assert steps[-1][2] == "0s"
    summary = out[out.rindex("\nsummary\n"):]
    assert re.search(r"^  status +finished at step 8/8$", summary, re.MULTILINE)
    wall = re.search(r"^  wall time +(\d+)s$", summary, re.MULTILINE)
    assert wall and 0 < int(wall.group(1)) < 300
    assert re.search(rf"^  run dir +{re.escape(str(run_dir))}$", summary, re.MULTILINE)
    final_loss = re.search(r"^  final +loss ([\d.]+) ", summary, re.MULTILINE)
    assert final_loss and "val/loss" in summary and "val/acc" in summary
    best = re.search(r"^  best checkpoint +(\S+)  \(val/loss ([\d.]+) at step (\d+)\)$", summary, re.MULTILINE)
    assert best, summary
    best_dir = Path(best.group(1))
    assert best_dir.parent == run_dir / "checkpoints" and (best_dir / "model.safetensors").is_file()
    assert best_dir.name == (run_dir / "checkpoints" / "best").read_text().strip()
    evals = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if '"eval"' in line]
    lowest = min(evals, key=lambda e: e["values"]["val/loss"])
    assert int(best.group(3)) == lowest["step"] and float(best.group(2)) == pytest.approx(lowest["values"]["val/loss"], 1e-3)


def test_on_a_terminal_a_bar_shows_rate_eta_and_loss(tmp_path, data_root):
    code, drawn = run_in_terminal(["train", str(_config(tmp_path, data_root)), "--run-dir", str(tmp_path / "run")],
                                  tmp_path, train_env(tmp_path))
    assert code == 0, drawn[-3000:]
    # tqdm redraws one line: "t: 100%|####| 8/8 [00:05<00:00,  1.52step/s, loss=2.0411]"
    bars = re.findall(r"(\d+)/8 \[(\d\d:\d\d)<(\d\d:\d\d), +([\d.]+)(?:step/s|s/step), loss=([\d.]+)\]", drawn)
    assert bars, drawn[-3000:]
    assert bars[-1][0] == "8" and float(bars[-1][4]) > 0
    assert "\r" in drawn and "summary" in drawn


def test_a_bundled_config_runs_by_name_from_any_folder(tmp_path, demo_dataset):
    data_dir = tmp_path / "data"
    (data_dir / "datasets").mkdir(parents=True)
    (data_dir / "datasets" / "demo").symlink_to(demo_dataset, target_is_directory=True)
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    quick = ["train.steps=2", "train.batch_size=8", "data.num_workers=0", "eval.every=2", "eval.max_samples=16",
             "eval.zeroshot=false", "train.system_every_s=0"]
    done = cliplab("train", "cpu-demo", *(a for kv in quick for a in ("--set", kv)), cwd=elsewhere,
                   env=train_env(data_dir))
    assert done.returncode == 0, done.stderr
    (run_dir,) = (elsewhere / "runs").iterdir()
    assert run_dir.name.startswith("cpu-demo-") and "status           finished at step 2/2" in done.stdout
    missing = cliplab("train", "cpu-dmeo", cwd=elsewhere, env=train_env(data_dir))
    assert missing.returncode == 2
    assert "config file not found: cpu-dmeo" in missing.stderr and "cpu-demo, rn50-scratch" in missing.stderr


def test_configs_lists_the_bundled_configs_and_prints_one(tmp_path):
    env = train_env(tmp_path)
    listed = cliplab("configs", cwd=tmp_path, env=env)
    assert listed.returncode == 0
    names = [line.split()[0] for line in listed.stdout.splitlines()[: len(bundled_configs())]]
    assert names == list(bundled_configs()) and "cpu-demo" in names
    assert re.search(r"^cpu-demo +The CPU demo: a tiny ViT", listed.stdout, re.MULTILINE)
    shown = cliplab("configs", "cpu-demo", cwd=tmp_path, env=env)
    assert shown.stdout == bundled_configs()["cpu-demo"].read_text()
    unknown = cliplab("configs", "nope", cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "no bundled config 'nope'" in unknown.stderr


def test_runs_lists_a_runs_folder_with_status_progress_and_metrics(tmp_path, data_root):
    runs = tmp_path / "runs"
    env = train_env(tmp_path)
    for name, steps in (("first", 4), ("second", 8)):
        cfg = tiny_config(data_root, name=name, output_dir=str(runs),
                          train={"steps": steps, "log_every": 2, "system_every_s": 0}, eval={"every": 4})
        done = cliplab("train", str(write_config(tmp_path / f"{name}.yaml", cfg)), cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
    with EventWriter(runs / "crashed-run") as ev:  # a run whose process died mid-way: its last word stands
        ev.status("starting", total_steps=100)
        ev.status("running", step=0, total_steps=100)
        ev.emit("metric", step=30, values={"loss": 3.5})

    listed = cliplab("runs", str(runs), cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["RUN", "NAME", "STATUS", "STEP", "LOSS", "BEST", "DURATION", "UPDATED"]
    assert len(rows) == 3 and rows[0].startswith("crashed-run ")  # newest activity first
    by_name = {r.split()[1]: r.split() for r in rows}
    assert by_name["second"][2:4] == ["finished", "8/8"] and by_name["first"][2:4] == ["finished", "4/4"]
    assert by_name["-"][2:5] == ["running", "30/100", "3.5"]
    as_json = json.loads(cliplab("runs", str(runs), "--json", cwd=tmp_path, env=env).stdout)
    second = next(r for r in as_json if r["name"] == "second")
    events = [json.loads(line) for line in (Path(second["run_dir"]) / "events.jsonl").read_text().splitlines()]
    last_loss = [e for e in events if e["kind"] == "metric"][-1]["values"]["loss"]
    best_val = min(e["values"]["val/loss"] for e in events if e["kind"] == "eval")
    assert second["loss"] == last_loss and second["best"] == f"val/loss {best_val:.4g}"
    assert 0 < second["duration_s"] < 300
    # One run directory on its own; a folder that is not there.
    assert cliplab("runs", second["run_dir"], cwd=tmp_path, env=env).stdout.count("\n") == 2
    gone = cliplab("runs", str(tmp_path / "nowhere"), cwd=tmp_path, env=env)
    assert gone.returncode == 2 and "is not a folder" in gone.stderr


def test_runs_piped_into_a_reader_that_leaves_exits_quietly(tmp_path):
    with EventWriter(tmp_path / "runs" / "a-run") as ev:
        ev.status("starting", total_steps=10)
    reader, writer = os.pipe()
    os.close(reader)  # like `cliplab runs | head -1` once head has exited
    try:
        done = subprocess.run([sys.executable, "-m", "trainer", "runs", str(tmp_path / "runs")], cwd=tmp_path,
                              env=train_env(tmp_path), stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(writer)
    assert done.returncode == 141 and "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_runs_limit_below_one_is_refused_instead_of_cutting_the_list(tmp_path, capsys):
    from trainer.commands import main

    with EventWriter(tmp_path / "runs" / "a-run") as ev:
        ev.status("starting", total_steps=10)
    for bad in ("-1", "0"):  # -1 used to drop the oldest run, 0 to say "no runs"
        with pytest.raises(SystemExit) as exit_:
            main(["runs", str(tmp_path / "runs"), "--limit", bad])
        assert exit_.value.code == 2 and "--limit: must be 1 or more" in capsys.readouterr().err
    assert main(["runs", str(tmp_path / "runs"), "--limit", "1"]) == 0 and "a-run" in capsys.readouterr().out


def _running_with_events(server: Any, events: list[dict[str, Any]]) -> str:
    run_id, token = _running_with_token(server)
    r = _post(server, run_id, token, events)
    assert r.status_code == 200, r.text
    return run_id


def test_runs_lists_the_runs_of_a_server_through_its_api(app_server_factory, tmp_path):
    server = app_server_factory(token="s3cret-token")
    server.client.headers["Authorization"] = "Bearer s3cret-token"
    trained = _running_with_events(server, [
        {"seq": 0, "time": 1.0, "kind": "status", "status": "running", "step": 0, "total_steps": 50},
        {"seq": 1, "time": 2.0, "kind": "metric", "step": 20, "values": {"loss": 1.25}},
        {"seq": 2, "time": 3.0, "kind": "eval", "step": 20, "values": {"val/loss": 1.5, "val/acc": 0.4}},
        {"seq": 3, "time": 4.0, "kind": "eval", "step": 40, "values": {"val/loss": 1.75, "val/acc": 0.5}},
    ])
    server.client.patch(f"/api/runs/{trained}", json={"name": "trained"}).raise_for_status()
    queued = server.client.post("/api/runs", json={"name": "waiting", "config": {}}).json()["id"]
    env = {**train_env(tmp_path), "CLIPLAB_TOKEN": "s3cret-token"}

    listed = cliplab("runs", "--server", server.base_url, cwd=tmp_path, env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert set(rows) == {trained, queued}
    assert rows[trained][1:6] == ["trained", "running", "40/50", "1.25", "val/loss"] and rows[trained][6] == "1.5"
    assert rows[queued][1:3] == ["waiting", "queued"]

    no_token = {k: v for k, v in env.items() if k != "CLIPLAB_TOKEN"}
    refused = cliplab("runs", "--server", server.base_url, cwd=tmp_path, env=no_token)
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "--token" in refused.stderr
    with_flag = cliplab("runs", "--server", server.base_url, "--token", "s3cret-token", "--json", cwd=tmp_path,
                        env=no_token)
    assert {r["run"] for r in json.loads(with_flag.stdout)} == {trained, queued}


def test_runs_shows_a_silent_run_that_no_training_holds_as_lost(tmp_path):
    from trainer.training.run_lock import lock_run_dir, unlock_run_dir

    runs, long_ago = tmp_path / "runs", time.time() - 600
    for name in ("killed", "held", "quiet-but-recent"):
        (runs / name).mkdir(parents=True)
        t = long_ago if name != "quiet-but-recent" else time.time() - 30
        lines = [{"seq": 1, "time": t, "kind": "status", "status": "starting", "total_steps": 100},
                 {"seq": 2, "time": t + 1, "kind": "status", "status": "running", "step": 0, "total_steps": 100}]
        (runs / name / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert lock_run_dir(runs / "held") is None  # a training (here: this test) still holds that folder
    try:
        listed = json.loads(cliplab("runs", str(runs), "--json", cwd=tmp_path, env=train_env(tmp_path)).stdout)
    finally:
        unlock_run_dir(runs / "held")
    assert {r["run"]: r["status"] for r in listed} == {"killed": "lost", "held": "running", "quiet-but-recent": "running"}
