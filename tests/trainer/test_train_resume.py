"""Checkpoints and resume: N steps, stop, resume N == 2N straight (weights and metric series)."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from contract.config import RunConfig
from contract.events import read_events
from trainer.distributed import init_distributed
from trainer.events import EventWriter
from trainer.training.checkpoint_folder import CheckpointFolder, resolve_resume
from trainer.training.stop import StopRequest
from trainer.training.trainer import Trainer

from tests.train_support import make_dataset, one_torch_thread, read_metrics, tiny_config

# Columns that do not depend on wall-clock time.
DETERMINISTIC = ["step", "train_loss", "lr", "acc", "similarity", "logit_scale", "grad_norm"]


def _train(cfg: dict, run_dir, resume=None, stop_after: int | None = None) -> str:
    """Run the real Trainer in this process; `stop_after` delivers a stop request (what SIGTERM's handler
    does) right after that step, so the loop saves and stops there."""
    stop = StopRequest()
    with EventWriter(run_dir) as events:
        trainer = Trainer(RunConfig.model_validate(cfg), run_dir, init_distributed(), events, stop, resume)
        if stop_after is not None:
            step = trainer.train_step

            def step_then_stop():
                step()
                if trainer.step + 1 == stop_after:
                    stop.signal = signal.SIGTERM

            trainer.train_step = step_then_stop
        status = trainer.train()
        trainer.close()
    return status


_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def cfg(data):
    # Accumulation and eval on, checkpoint interval 3 (not a multiple of log_every=2, so a log window is
    # open across the checkpoint), keep_last=1 (pruning), best by val loss.
    return tiny_config(data, train={"batch_size": 4, "accum_steps": 2, "steps": 8, "log_every": 2},
                       eval={"every": 4, "batch_size": 8, "matrix_size": 4},
                       checkpoint={"every": 3, "keep_last": 1})


@pytest.fixture(scope="module")
def straight(cfg, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    assert _train(cfg, run_dir) == "finished"
    return run_dir


@pytest.fixture(scope="module")
def resumed(cfg, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("resumed")
    assert _train(cfg, run_dir, stop_after=5) == "stopped"
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_000005"
    assert _train(cfg, run_dir, resume=resolve_resume("latest", run_dir)) == "finished"
    return run_dir


@pytest.mark.slow  # two training runs (module fixtures)
def test_resumed_run_ends_with_the_same_weights_as_the_straight_run(straight, resumed):
    a = load_file(straight / "checkpoints" / "step_000008" / "model.safetensors")
    b = load_file(resumed / "checkpoints" / "step_000008" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-6, msg=key)
    state = torch.load(resumed / "checkpoints" / "step_000008" / "train_state.pt", weights_only=True)
    assert state["step"] == 8


@pytest.mark.slow  # two training runs (module fixtures)
def test_resumed_run_writes_the_same_metric_series(straight, resumed):
    rows_a, rows_b = read_metrics(straight / "metrics.csv"), read_metrics(resumed / "metrics.csv")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b] == ["2", "4", "6", "8"]
    eval_cols = [c for c in rows_a[0] if c.startswith("val/")]
    assert "val/loss" in eval_cols
    for ra, rb in zip(rows_a, rows_b):
        for col in DETERMINISTIC + eval_cols:
            assert ra[col] == rb[col], (ra["step"], col)
    assert rows_a[1]["val/loss"] and not rows_a[0]["val/loss"]  # eval columns only on eval rows


@pytest.mark.slow  # two training runs (module fixtures)
def test_events_continue_across_the_resume_without_gaps_or_repeats(resumed):
    events = list(read_events(resumed / "events.jsonl"))
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(len(seqs)))
    metric_steps = [e["step"] for e in events if e["kind"] == "metric"]
    assert metric_steps == [2, 4, 6, 8]
    statuses = [e["status"] for e in events if e["kind"] == "status"]
    assert statuses == ["starting", "running", "stopped", "starting", "running", "finished"]
    stopped = next(e for e in events if e.get("status") == "stopped")
    assert stopped["step"] == 5 and stopped["total_steps"] == 8


@pytest.mark.slow  # two training runs (module fixtures)
def test_checkpoints_keep_last_plus_best_and_pointers_name_them(straight):
    ckpt = CheckpointFolder(straight)
    names = [p.name for p in ckpt.step_dirs()]
    best = ckpt.pointer("best")
    assert best is not None and best.name in names
    assert ckpt.pointer("latest").name == "step_000008"
    assert set(names) == {"step_000008", best.name}
    for name in names:
        d = straight / "checkpoints" / name
        assert {"model.safetensors", "model.json", "train_state.pt"} <= {p.name for p in d.iterdir()}
        assert json.loads((d / "model.json").read_text())["model_args"]["vision_width"] == 128
    state = torch.load(best / "train_state.pt", weights_only=True)
    assert state["best"]["metric"] == "val/loss" and state["best"]["step"] == int(best.name.split("_")[1])
    kinds = [e["checkpoint_kind"] for e in read_events(straight / "events.jsonl") if e["kind"] == "checkpoint"]
    assert kinds[-1] == "final" and "best" in kinds
    assert not list((straight / "checkpoints").glob(".tmp-*"))


def test_resume_spec_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="needs --run-dir"):
        resolve_resume("latest", None)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        resolve_resume(str(tmp_path), None)


def test_a_damaged_train_state_is_a_checkpoint_error_naming_the_file(tmp_path):
    from trainer.checkpoint import CheckpointError
    from trainer.training.checkpoint_folder import load_train_state

    step_dir = tmp_path / "checkpoints" / "step_000004"
    step_dir.mkdir(parents=True)
    (step_dir / "train_state.pt").write_bytes(b"")  # a disk that filled up while saving
    with pytest.raises(CheckpointError, match="train_state.pt \\(the file is empty\\)"):
        load_train_state(step_dir)
    torch.save({"step": 4}, step_dir / "train_state.pt")
    (step_dir / "train_state.pt").write_bytes((step_dir / "train_state.pt").read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_train_state(step_dir)


def test_resume_latest_naming_a_deleted_step_points_at_the_newest_complete_one(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "step_000050").mkdir(parents=True)
    (checkpoints / "step_000050" / "train_state.pt").write_bytes(b"x")
    (checkpoints / "latest").write_text("step_000058")  # its directory was deleted by hand
    with pytest.raises(FileNotFoundError, match="step_000050 is: pass it as --resume PATH"):
        resolve_resume("latest", tmp_path)
