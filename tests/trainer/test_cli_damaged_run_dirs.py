"""`cliplab runs` and `cliplab train` given run directories that are damaged or cannot be written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.train_support import train_env


def cliplab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=cwd, env=train_env(cwd), capture_output=True,
                          text=True, timeout=120, check=False)


def _finished_run(run_dir: Path, t: float = 1000.0) -> Path:
    run_dir.mkdir(parents=True)
    events = [{"seq": 0, "time": t, "kind": "status", "status": "starting", "total_steps": 8},
              {"seq": 1, "time": t + 1, "kind": "eval", "step": 8, "values": {"val/loss": 2.0}},
              {"seq": 2, "time": t + 5, "kind": "status", "status": "finished", "step": 8, "total_steps": 8}]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "config.yaml").write_text("name: demo\ncheckpoint:\n  best_metric: val/loss\n")
    return run_dir


def test_runs_lists_every_run_when_some_have_a_damaged_config_or_events(tmp_path):
    runs = tmp_path / "runs"
    _finished_run(runs / "good")
    (_finished_run(runs / "config-of-wrong-shape") / "config.yaml").write_text("name: 5\ncheckpoint: [1]\n")
    odd = [{"seq": 0, "time": "yesterday", "kind": "status", "status": "starting", "total_steps": 8},
           {"seq": 1, "time": 1001, "kind": "status", "status": ["running"]},
           {"seq": 2, "time": 1002, "kind": "eval", "step": 8, "values": {"val/loss": 2.0, "val/acc": True}},
           {"seq": 3, "time": 1005, "kind": "status", "status": "finished", "step": 8, "total_steps": 8}]
    (_finished_run(runs / "odd-events") / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in odd))
    with (_finished_run(runs / "bad-bytes") / "events.jsonl").open("ab") as f:
        f.write(b'{"seq": 3, "kind": "log", "message": "\xff\xfe"}\n')
    listed = cliplab("runs", str(runs), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["run"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"good", "config-of-wrong-shape", "odd-events", "bad-bytes"}
    assert all(r["status"] == "finished" and r["best"] == "val/loss 2" for r in rows.values()), rows
    assert rows["config-of-wrong-shape"]["name"] == "5"
    assert "Traceback" not in listed.stderr


def test_train_into_a_run_dir_that_cannot_be_written_is_bad_input_naming_it(tmp_path):
    from tests.train_support import make_dataset, tiny_config, write_config

    config = write_config(tmp_path / "c.yaml", tiny_config(make_dataset(tmp_path / "data", 1, 1)))
    done = cliplab("train", str(config), "--run-dir", "c.yaml/run", cwd=tmp_path)  # a folder under a file
    assert done.returncode == 2, done.stderr
    assert "run directory c.yaml/run: cannot write there" in done.stderr and "Traceback" not in done.stderr
    assert config.is_file()
