"""Checks that need an NVIDIA GPU: bf16 training, torchrun with NCCL, GPU JPEG decoding.

Skipped on machines without CUDA (CI has none); a GPU machine runs them with bench/gpu_checks.sh.
"""

import subprocess
import sys

import pytest
import torch

from contract.events import read_events

from tests.train_support import REPO, make_dataset, read_metrics, run_trainer, tiny_config, train_env, write_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def _final_status(run_dir):
    return [e for e in read_events(run_dir / "events.jsonl") if e["kind"] == "status"][-1]["status"]


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_on_cuda_finishes_with_finite_decreasing_loss(data, tmp_path, precision):
    cfg = tiny_config(data, train={"steps": 20, "log_every": 5, "device": "cuda", "precision": precision,
                                   "batch_size": 16}, optim={"lr": 1e-3})
    run_dir = tmp_path / "run"
    proc = run_trainer([str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)], train_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _final_status(run_dir) == "finished"
    losses = [float(r["train_loss"]) for r in read_metrics(run_dir / "metrics.csv") if r["train_loss"]]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_torchrun_with_nccl_finishes(data, tmp_path):
    cfg = tiny_config(data, train={"steps": 6, "log_every": 3, "device": "auto"})
    run_dir = tmp_path / "run"
    nproc = str(min(2, torch.cuda.device_count()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", nproc,
           "-m", "trainer", "train", str(write_config(tmp_path / "c.yaml", cfg)), "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, env=train_env(tmp_path), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _final_status(run_dir) == "finished"


def test_gpu_jpeg_decoding_gives_the_cpu_path_s_images(data):
    from contract.config import DataConfig
    from trainer.data import build_train_loader

    device = torch.device("cuda")
    images = {}
    for gpu in (False, True):
        # Whole-image crops (scale 1.0): the two paths resize with different kernels, so compare per-image
        # colour statistics, which a wrong decode, channel order or normalisation would change.
        cfg = DataConfig(train=str(data / "train.csv"), val=None, num_workers=0, gpu_decode=gpu,
                         train_crop_scale=(1.0, 1.0))
        loader = build_train_loader(cfg, 8, 32, seed=3, device=device, log=lambda m: None)
        images[gpu] = next(loader)["image"].to(device).float()
        loader.close()
    cpu, gpu = images[False], images[True]
    assert cpu.shape == gpu.shape == (8, 3, 32, 32)
    assert torch.isfinite(gpu).all()
    assert (cpu.mean(dim=(2, 3)) - gpu.mean(dim=(2, 3))).abs().max() < 0.15
