"""Run-checkpoint bookkeeping and metrics.csv, without a model."""

import os
import random

import numpy as np
import pytest
import torch

from trainer.training.checkpoint_folder import CheckpointFolder, load_train_state, resolve_resume
from trainer.training.metrics import SEED_COLUMNS, LogWindow, MetricsCsv
from trainer.training.rng import capture_rng_state, restore_rng_state

from tests.train_support import read_metrics


def _weights(d):
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w")


def test_keep_last_n_plus_best_and_pointers_survive_pruning(tmp_path):
    ckpt = CheckpointFolder(tmp_path, keep_last=2)
    for step in (10, 20, 30, 40, 50):
        ckpt.save(step, _weights, {"step": step}, best=step == 20)
    assert [p.name for p in ckpt.step_dirs()] == ["step_000020", "step_000040", "step_000050"]
    assert ckpt.pointer("latest").name == "step_000050" and ckpt.pointer("best").name == "step_000020"
    assert load_train_state(ckpt.pointer("latest"))["step"] == 50
    assert resolve_resume("latest", tmp_path) == ckpt.pointer("latest")
    assert resolve_resume(str(tmp_path), None) == ckpt.pointer("latest")
    assert resolve_resume(str(tmp_path / "checkpoints" / "step_000020"), None).name == "step_000020"


def test_a_save_interrupted_before_the_rename_leaves_the_previous_checkpoint_intact(tmp_path):
    ckpt = CheckpointFolder(tmp_path, keep_last=2)
    ckpt.save(1, _weights, {"step": 1})

    def crash(d):
        _weights(d)
        raise KeyboardInterrupt  # killed while writing step 2

    with pytest.raises(KeyboardInterrupt):
        ckpt.save(2, crash, {"step": 2})
    assert ckpt.pointer("latest").name == "step_000001"
    assert [p.name for p in ckpt.step_dirs()] == ["step_000001"]
    ckpt.clean_partial()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_a_step_saved_again_and_killed_between_the_renames_is_put_back_from_its_old_copy(tmp_path):
    ckpt = CheckpointFolder(tmp_path, keep_last=2)
    ckpt.save(1, _weights, {"step": 1})
    folder = tmp_path / "checkpoints"
    # _replace_dir's first rename done, the second not: the only copy of step 1 is the old one.
    os.replace(folder / "step_000001", folder / ".tmp-old-step_000001-4242")
    _weights(folder / ".tmp-step_000001-4242")  # the new copy, maybe incomplete
    ckpt.clean_partial()
    assert [p.name for p in ckpt.step_dirs()] == ["step_000001"] and not list(folder.glob(".tmp-*"))
    assert load_train_state(ckpt.pointer("latest"))["step"] == 1


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    state = capture_rng_state()
    torch.save(state, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(torch.load(tmp_path / "s.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_metrics_csv_has_seed_columns_first_grows_for_new_columns_and_drops_rows_after_a_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    csv = MetricsCsv(path)
    csv.write({"time": 1.0, "step": 1, "loss": 2.5, "lr": 1e-4, "acc": 0.1, "similarity": 0.2})
    csv.write({"time": 2.0, "step": 2, "loss": 2.0, "val/acc": 0.5})
    csv.write({"time": 3.0, "step": 3, "loss": 1.5})
    assert path.read_text().splitlines()[0].startswith(",".join(SEED_COLUMNS))
    rows = read_metrics(path)
    assert [r["train_loss"] for r in rows] == ["2.5", "2", "1.5"]
    assert [r["val/acc"] for r in rows] == ["", "0.5", ""]
    MetricsCsv(path, resume_step=2)
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == ["1", "2"] and rows[1]["val/acc"] == "0.5"


def test_log_window_averages_on_read_and_survives_a_state_round_trip():
    w = LogWindow(["loss", "acc"], torch.device("cpu"))
    w.add(loss=torch.tensor(2.0), acc=torch.tensor(0.5))
    restored = LogWindow(["loss", "acc"], torch.device("cpu"))
    restored.load_state_dict(w.state_dict())
    restored.add(loss=torch.tensor(4.0), acc=torch.tensor(1.0))
    assert restored.read() == {"loss": 3.0, "acc": 0.75}
    assert restored.steps == 0


def test_resume_from_a_latest_or_best_pointer_file_means_the_step_it_names(tmp_path):
    ckpt = CheckpointFolder(tmp_path, keep_last=3)
    for step in (10, 20):
        ckpt.save(step, _weights, {"step": step}, best=step == 10)
    pointers = tmp_path / "checkpoints"
    assert resolve_resume(str(pointers / "best"), None).name == "step_000010"
    assert resolve_resume(str(pointers / "latest"), None).name == "step_000020"
    (pointers / "latest").write_text("step_000030\n")  # a step deleted by hand
    with pytest.raises(FileNotFoundError, match="names step_000030, which is not a complete step directory.*"
                                                "complete ones: step_000010, step_000020"):
        resolve_resume(str(pointers / "latest"), None)


def test_resume_from_a_weights_file_says_to_start_a_run_from_it_instead(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "ViT-B-32.pt")
    with pytest.raises(FileNotFoundError, match="a file, not a training checkpoint.*model.pretrained="):
        resolve_resume(str(tmp_path / "ViT-B-32.pt"), None)


_SAVE_UNDER_A_FILE_SIZE_LIMIT = """
import resource, signal, sys, torch
from trainer.training.checkpoint_folder import CheckpointFolder

def weights(d):
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"w")

folder = CheckpointFolder(sys.argv[1])
folder.save(1, weights, {"step": 1})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    folder.save(2, weights, {"step": 2, "optimizer": torch.zeros(100_000)})
except OSError as exc:
    print(exc)
"""


def test_a_checkpoint_the_disk_cannot_hold_frees_its_space_and_keeps_the_previous_one(tmp_path):
    import subprocess
    import sys

    from tests.train_support import REPO

    done = subprocess.run([sys.executable, "-c", _SAVE_UNDER_A_FILE_SIZE_LIMIT, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "cannot write checkpoint" in done.stdout and "step_000002" in done.stdout
    assert "latest still names step_000001" in done.stdout
    ckpt = CheckpointFolder(tmp_path)
    assert ckpt.pointer("latest").name == "step_000001" and load_train_state(ckpt.pointer("latest")) == {"step": 1}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000001"]
