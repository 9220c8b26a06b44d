"""Resuming with changed optimizer settings applies them: the logged lr follows the new schedule from the
first resumed step, and the optimizer uses the new weight decay and betas (the saved optimizer and scheduler
state would otherwise bring the old ones back, silently)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from contract.config import ConfigError, RunConfig
from contract.events import read_events
from trainer.distributed import init_distributed
from trainer.events import EventWriter
from trainer.training.checkpoint_folder import resolve_resume
from trainer.training.stop import StopRequest
from trainer.training.trainer import Trainer

from tests.train_support import make_dataset, one_torch_thread, read_metrics, tiny_config
from tests.trainer.test_train_resume import _train

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)
STOP_AT = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), train_per_class=3, val_per_class=1)


def _config(data: Path, **optim: Any) -> dict[str, Any]:
    steps = optim.pop("steps", 8)
    return tiny_config(data, optim={"lr": 1e-3, "warmup_steps": 2, "min_lr": 0.0, **optim},
                       train={"batch_size": 4, "steps": steps, "log_every": 1},
                       eval={"every": 100, "batch_size": 4, "matrix_size": 2}, checkpoint={"every": 4, "keep_last": 1})


@pytest.fixture(scope="module")
def stopped(data, tmp_path_factory) -> Path:
    """A run of the original settings stopped (checkpoint saved) after step 4."""
    run_dir = tmp_path_factory.mktemp("stopped")
    assert _train(_config(data), run_dir, stop_after=STOP_AT) == "stopped"
    return run_dir


def _lrs(run_dir: Path) -> dict[int, float]:
    return {int(row["step"]): float(row["lr"]) for row in read_metrics(run_dir / "metrics.csv")}


CHANGES = {
    "lr": {"lr": 5e-3},
    "min_lr": {"min_lr": 4e-4},
    "warmup_steps": {"warmup_steps": 6},
    "schedule_length": {"steps": 12},
    "schedule_kind": {"schedule": "constant"},
}


@pytest.mark.slow  # a resumed training run per case
@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_the_logged_lr_follows_changed_settings_from_the_first_resumed_step(data, stopped, tmp_path, change):
    changed = _config(data, **CHANGES[change])
    straight = tmp_path / "straight"
    straight.mkdir()
    assert _train(changed, straight) == "finished"  # the reference: these settings from step 1
    resumed = tmp_path / "resumed"
    shutil.copytree(stopped, resumed)
    assert _train(changed, resumed, resume=resolve_resume("latest", resumed)) == "finished"
    expected, got = _lrs(straight), _lrs(resumed)
    after = sorted(s for s in expected if s > STOP_AT)
    assert after and [got[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-6)
    if change == "lr":  # the run says what it changed, and from when
        notes = [e["message"] for e in read_events(resumed / "events.jsonl") if e["kind"] == "log"]
        assert any("optim.lr 0.001 -> 0.005: applied from step 5" in n for n in notes), notes


def test_weight_decay_and_betas_changed_on_resume_are_what_the_optimizer_uses(data, stopped, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(stopped, resumed)
    cfg = RunConfig.model_validate(_config(data, weight_decay=0.05, betas=[0.8, 0.95], eps=1e-7))
    with EventWriter(resumed) as events:
        trainer = Trainer(cfg, resumed, init_distributed(), events, StopRequest(), resolve_resume("latest", resumed))
        groups = trainer.optimizer.param_groups
        assert [g["weight_decay"] for g in groups] == [0.05, 0.0]  # only matrices decay, as at the start
        assert all(tuple(g["betas"]) == (0.8, 0.95) and g["eps"] == 1e-7 for g in groups)
        trainer.close()
    notes = [e["message"] for e in read_events(resumed / "events.jsonl") if e["kind"] == "log"]
    [note] = [n for n in notes if "resuming with optim." in n]
    assert "optim.betas [0.9, 0.98] -> [0.8, 0.95]" in note and "optim.weight_decay 0.1 -> 0.05" in note


@pytest.mark.slow
def test_resume_with_overrides_through_the_server_trains_at_the_new_rate(live_server_factory):
    from tests.backend.test_integration import file_events, tiny_config

    server = live_server_factory(max_cpu_runs=1)
    created = server.post("/api/runs", json={"name": "lr-change", "config": tiny_config(steps=4)})
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    done = server.wait_status(run_id, ("finished", "failed", "stopped"), 180)
    assert done["status"] == "finished", done
    old_lr = done["config"]["optim"]["lr"]
    overrides = {"train.steps": 7, "optim.lr": old_lr * 4, "optim.schedule": "constant"}
    assert server.post(f"/api/runs/{run_id}/resume", json={"overrides": overrides}).status_code == 200
    done = server.wait_status(run_id, ("finished", "failed", "stopped"), 180)
    assert done["status"] == "finished" and done["step"] == 7, done
    logged = {e["step"]: e["values"]["lr"] for e in file_events(done) if e["kind"] == "metric"}
    assert [logged[s] for s in (5, 6, 7)] == pytest.approx([old_lr * 4] * 3)


def test_schedule_settings_changed_on_resume_are_logged(data, stopped, tmp_path):
    """warmup_steps, min_lr, the schedule and train.steps live in the rebuilt schedule, not in the saved
    optimizer state: the run still says what it changed (the README promises a log of every change)."""
    resumed = tmp_path / "resumed"
    shutil.copytree(stopped, resumed)
    cfg = RunConfig.model_validate(_config(data, warmup_steps=3, min_lr=1e-5, schedule="constant", steps=10))
    with EventWriter(resumed) as events:
        trainer = Trainer(cfg, resumed, init_distributed(), events, StopRequest(), resolve_resume("latest", resumed))
        trainer.close()
    notes = [e["message"] for e in read_events(resumed / "events.jsonl") if e["kind"] == "log"]
    [note] = [n for n in notes if n.startswith("resuming with ")]
    for change in ("optim.warmup_steps 2 -> 3", "optim.min_lr 0.0 -> 1e-05", "optim.schedule cosine -> constant",
                   "train.steps 8 -> 10"):
        assert change in note, note
    assert note.endswith(f"applied from step {STOP_AT + 1}"), note


def test_resume_with_train_steps_below_the_checkpoints_step_is_a_field_error(data, stopped, tmp_path):
    """A resume to fewer steps than the checkpoint has taken would 'finish' at step 4/2 and leave config.yaml
    saying 2 steps: it is refused, naming train.steps, before the run directory changes."""
    resumed = tmp_path / "resumed"
    shutil.copytree(stopped, resumed)
    before = (resumed / "config.yaml").read_text()
    cfg = RunConfig.model_validate(_config(data, steps=STOP_AT - 2))
    with EventWriter(resumed) as events, pytest.raises(ConfigError, match=r"^train\.steps: .* at step 4, past"):
        Trainer(cfg, resumed, init_distributed(), events, StopRequest(), resolve_resume("latest", resumed))
    assert (resumed / "config.yaml").read_text() == before
