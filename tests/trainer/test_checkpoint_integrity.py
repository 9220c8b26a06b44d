"""Checkpoints that say when they are damaged (SHA256SUMS, checked on every load) and are on the disk before
`latest` names them (fsync of the files, the step directory and checkpoints/)."""

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

import trainer
from trainer.checkpoint import CheckpointError, load_weights, save_model
from trainer.distributed import DistInfo
from trainer.events import EventWriter
from trainer.integrity import MANIFEST
from trainer.model import build_model
from trainer.training.checkpoint_folder import CheckpointFolder, load_train_state
from trainer.training.checkpointer import Checkpointer, StateEntry
from trainer.training.progress import Console, TrainProgress

from tests.tiny_models import SMALL_VIT
from tests.train_support import make_dataset, run_trainer, tiny_config, train_env, write_config

SHA256SUM = shutil.which("sha256sum")
needs_sha256sum = pytest.mark.skipif(SHA256SUM is None, reason="coreutils' sha256sum is not installed")


def _checkpointer(run_dir: Path, model: torch.nn.Module, events: EventWriter) -> Checkpointer:
    """The Checkpointer over a model and its AdamW state (what a run's train_state.pt is mostly made of)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3, 32, 32), torch.randint(0, 500, (2, 20)))[0].sum().backward()
    optimizer.step()  # exp_avg / exp_avg_sq tensors in the state
    progress = TrainProgress(total_steps=10)
    dist = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"), is_main=True)
    components = {"optimizer": StateEntry(optimizer.state_dict, optimizer.load_state_dict)}
    return Checkpointer(CheckpointFolder(run_dir, keep_last=3), dist, progress, components, {}, {}, model, events,
                        Console(events, is_main=False))


@pytest.fixture
def saved(tmp_path):
    """A run dir with real checkpoints at steps 2 and 4 of a small ViT, written by the Checkpointer."""
    torch.manual_seed(0)
    model = build_model(SMALL_VIT)
    with EventWriter(tmp_path) as events:
        ckpt = _checkpointer(tmp_path, model, events)
        for step in (2, 4):
            ckpt.progress.step = step
            ckpt.save()
    return tmp_path / "checkpoints"


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _sha256sum_check(step_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SHA256SUM, "-c", MANIFEST], cwd=step_dir, capture_output=True, text=True)


@needs_sha256sum
def test_every_step_dir_carries_a_manifest_that_sha256sum_accepts(saved):
    for name in ("step_000002", "step_000004"):
        step_dir = saved / name
        listed = [line.split("  ", 1)[1] for line in (step_dir / MANIFEST).read_text().splitlines()]
        assert listed == sorted(p.name for p in step_dir.iterdir() if p.name != MANIFEST)
        assert set(listed) == {"model.json", "model.safetensors", "train_state.pt"}
        result = _sha256sum_check(step_dir)
        assert result.returncode == 0 and result.stdout.count(": OK") == 3, result.stdout + result.stderr


@needs_sha256sum
@pytest.mark.parametrize("damaged", ["train_state.pt", "model.safetensors"])
def test_a_byte_flipped_in_the_middle_of_a_file_is_a_checksum_error_naming_it(saved, damaged):
    step_dir = saved / "step_000004"
    _flip_middle_byte(step_dir / damaged)
    assert _sha256sum_check(step_dir).returncode != 0
    assert f"{damaged}: FAILED" in _sha256sum_check(step_dir).stdout
    with pytest.raises(CheckpointError, match=f"{damaged}: checksum mismatch") as raised:
        torch.manual_seed(1)
        with EventWriter(saved.parent / "resume") as events:
            _checkpointer(saved.parent / "resume", build_model(SMALL_VIT), events).load(step_dir)
    assert str(step_dir) in str(raised.value)
    assert f"--resume {saved.resolve() / 'step_000002'}" in str(raised.value)  # what to resume from instead
    if damaged == "train_state.pt":
        with pytest.raises(CheckpointError, match="train_state.pt: checksum mismatch"):
            load_train_state(step_dir)
        trainer.load(step_dir)  # the weights are intact: eval/embed of the step may go on
    else:
        load_train_state(step_dir)
        (step_dir / "model.json").rename(saved / "model.json")  # the weights file read alone is checked too
        with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch"):
            trainer.load(step_dir / "model.safetensors")
        (saved / "model.json").rename(step_dir / "model.json")
        for load in (lambda: trainer.load(step_dir), lambda: trainer.load(saved / "latest"),
                     lambda: load_weights(build_model(SMALL_VIT), step_dir)):
            with pytest.raises(CheckpointError, match="model.safetensors: checksum mismatch.*step_000002"):
                load()


def test_a_file_the_manifest_lists_that_is_gone_is_reported_missing(saved):
    (saved / "step_000004" / "model.json").unlink()
    with pytest.raises(CheckpointError, match="model.json: missing"):
        trainer.load(saved / "step_000004")
    trainer.load(saved / "step_000004" / "model.safetensors")  # the weights alone: they are intact
    (saved / "step_000002" / "train_state.pt").unlink()
    with pytest.raises(CheckpointError, match="train_state.pt: missing"):
        load_train_state(saved / "step_000002")


def test_a_step_dir_without_a_manifest_loads_unchecked_and_extra_files_are_fine(saved):
    step_dir = saved / "step_000004"
    (step_dir / "notes.txt").write_text("not in the manifest")
    assert load_train_state(step_dir)["step"] == 4
    (step_dir / MANIFEST).unlink()  # as an older cliplab wrote it
    _flip_middle_byte(step_dir / "train_state.pt")  # nothing can tell now
    model, _ = trainer.load(step_dir)
    assert model.args == SMALL_VIT
    with EventWriter(saved.parent / "resume") as events:
        resumed = _checkpointer(saved.parent / "resume", build_model(SMALL_VIT), events)
        resumed.load(saved / "step_000002")
    assert resumed.progress.step == 2


def test_resume_hashes_each_file_once(saved, monkeypatch):
    import trainer.integrity as integrity

    hashed = []
    real = integrity.sha256_file
    monkeypatch.setattr(integrity, "sha256_file", lambda path: hashed.append(Path(path).name) or real(path))
    with EventWriter(saved.parent / "resume") as events:
        _checkpointer(saved.parent / "resume", build_model(SMALL_VIT), events).load(saved / "step_000004")
    assert sorted(hashed) == ["model.json", "model.safetensors", "train_state.pt"]


def test_save_fsyncs_every_file_and_the_step_dir_before_the_rename_and_checkpoints_after(tmp_path, monkeypatch):
    # A power loss cannot be simulated here: record what reaches os.fsync, and what was in place at the time.
    folder = CheckpointFolder(tmp_path)
    final = tmp_path / "checkpoints" / "step_000003"
    synced: list[tuple[str, bool, str]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        latest = tmp_path / "checkpoints" / "latest"
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), final.is_dir(),
                       latest.read_text().strip() if latest.is_file() else ""))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    folder.save(3, lambda d: save_model(build_model(SMALL_VIT), d), {"step": 3})
    checkpoints = str((tmp_path / "checkpoints").resolve())
    before_rename = {Path(path).name for path, renamed, _ in synced
                     if not renamed and Path(path).parent.name.startswith(".tmp-step_000003")}
    assert {"model.safetensors", "model.json", "train_state.pt", MANIFEST} <= before_rename
    assert any(Path(path).name.startswith(".tmp-step_000003") and not renamed for path, renamed, _ in synced)
    assert any(path == checkpoints and renamed and not latest for path, renamed, latest in synced)  # the rename
    assert synced[-1] == (checkpoints, True, "step_000003")  # the replaced pointer

    synced.clear()
    folder.save_weights("wise_ft", lambda d: save_model(build_model(SMALL_VIT), d))
    assert {"model.safetensors", "model.json", MANIFEST} <= {Path(p).name for p, _, _ in synced}
    assert synced[-1][0] == checkpoints and (tmp_path / "checkpoints" / "wise_ft" / MANIFEST).is_file()


def test_the_manifest_travels_with_a_dashboard_download_and_counts_in_the_listed_size(saved, tmp_path):
    from backend.services.run_files import list_checkpoints, stream_tar

    listed = {c["name"]: c for c in list_checkpoints(saved.parent, {})}
    step_dir = saved / "step_000004"
    assert listed["step_000004"]["files"] == sorted(p.name for p in step_dir.iterdir())
    assert MANIFEST in listed["step_000004"]["files"]
    assert listed["step_000004"]["size_bytes"] == sum(p.stat().st_size for p in step_dir.iterdir())
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream_tar(step_dir)))) as tar:
        tar.extractall(tmp_path / "downloaded", filter="data")
    if SHA256SUM is not None:
        result = _sha256sum_check(tmp_path / "downloaded" / "step_000004")
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow  # real trainer processes
def test_cli_resume_of_a_damaged_latest_exits_2_naming_the_older_step_which_resumes(tmp_path):
    data = make_dataset(tmp_path / "data", train_per_class=2, val_per_class=1)
    env = train_env(tmp_path / "cliplab-data")
    cfg = write_config(tmp_path / "c.yaml", tiny_config(data, data={"val": None}, train={"steps": 4},
                                                         checkpoint={"every": 2, "keep_last": 2}))
    run_dir = tmp_path / "run"
    first = run_trainer([str(cfg), "--run-dir", str(run_dir)], env, timeout=240)
    assert first.returncode == 0, first.stderr
    checkpoints = run_dir / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step_000004"
    _flip_middle_byte(checkpoints / "step_000004" / "train_state.pt")
    events_before = (run_dir / "events.jsonl").read_bytes()

    damaged = run_trainer(["--run-dir", str(run_dir), "--resume", "latest", "--set", "train.steps=6"], env,
                          timeout=240)
    assert damaged.returncode == 2, damaged.stderr
    assert "train_state.pt: checksum mismatch" in damaged.stderr
    older = checkpoints.resolve() / "step_000002"
    assert f"--resume {older}" in damaged.stderr and "Traceback" not in damaged.stderr
    assert (run_dir / "events.jsonl").read_bytes() == events_before  # no silent fallback, nothing trained

    resumed = run_trainer(["--run-dir", str(run_dir), "--resume", str(older)], env, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {older} at step 2" in resumed.stdout + resumed.stderr
    assert (checkpoints / "latest").read_text().strip() == "step_000004"
    assert _sha256sum_check(checkpoints / "step_000004").returncode == 0  # step 4 written afresh
