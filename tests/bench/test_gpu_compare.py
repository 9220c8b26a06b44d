"""bench/gpu_compare.py cannot rot: its CPU smoke mode runs, and its fast paths equal their plain counterparts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.gpu_compare import build_pair, captions, make_step  # noqa: E402
from trainer.model import trim_tokens  # noqa: E402


@pytest.mark.slow  # runs the bench script
def test_cpu_smoke_mode_prints_the_table_with_both_libraries_and_end_to_end():
    r = subprocess.run([sys.executable, "bench/gpu_compare.py", "--device", "cpu", "--tiny"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = {line.split("  ")[0].strip(): line for line in r.stdout.splitlines()}
    assert "cliplab eager" in rows and "open_clip eager" in rows, r.stdout
    assert "x open_clip speed" in rows["cliplab eager"]
    assert "of synthetic" in rows["cliplab end to end (cache)"]


def test_both_libraries_start_from_the_same_weights_and_trimmed_captions_change_nothing():
    ours, theirs = build_pair("tiny-vit", torch.device("cpu"))
    ours.eval(), theirs.eval()
    g = torch.Generator().manual_seed(1)
    images, text = torch.randn(4, 3, 64, 64, generator=g), captions(4, 77, g)
    trimmed = trim_tokens(text)
    assert 10 <= trimmed.shape[1] <= 20  # realistic captions: cliplab runs a fraction of the 77 positions
    with torch.no_grad():
        img_a, txt_a, scale_a = ours(images, trimmed)
        img_b, txt_b, scale_b = theirs(images, text)[:3]
    torch.testing.assert_close(img_a, img_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(txt_a, txt_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scale_a, scale_b)


def _weights_after_steps(compiled: bool) -> dict[str, torch.Tensor]:
    ours, _ = build_pair("tiny-vit", torch.device("cpu"))
    step = make_step("cliplab", ours, torch.device("cpu"), None, compiled)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        step(torch.randn(4, 3, 64, 64, generator=g), trim_tokens(captions(4, 77, g)))
    return {n: p.detach().clone() for n, p in ours.named_parameters()}


@pytest.mark.slow
def test_the_compiled_step_trains_to_the_weights_the_eager_step_reaches():
    pytest.importorskip("torch._inductor")
    eager, compiled = _weights_after_steps(False), _weights_after_steps(True)
    for name in eager:  # Adam may flip the sign of a ~1e-9 gradient's update: at most 2 steps x 2 x lr (1e-5)
        torch.testing.assert_close(compiled[name], eager[name], atol=4e-5, rtol=1e-4, msg=name)
