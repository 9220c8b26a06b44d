"""AdamW step time: the per-tensor loop vs foreach vs the fused kernel that build_optimizer picks.

    python bench/bench_optim.py                          # tiny-vit and ViT-B-32 on the CPU
    python bench/bench_optim.py --presets ViT-B-32 --device cuda --steps 50

Gradients are random (the step's cost does not depend on them); each configuration is timed over --steps
steps after two warm-up steps, all in one process, and printed with its ratio to the loop.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from contract.config import OptimConfig  # noqa: E402
from contract.presets import get_preset  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.training.optim import adamw_implementation, param_groups  # noqa: E402

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def step_times_ms(model: torch.nn.Module, impl: dict, steps: int, device: torch.device) -> list[float]:
    cfg = OptimConfig()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                            eps=cfg.eps, **impl)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    times = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny-vit,ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"AdamW step, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for preset in args.presets.split(","):
        model = build_model(get_preset(preset)).to(device)
        chosen = adamw_implementation(device, model.parameters())
        base = None
        for label, impl in IMPLEMENTATIONS.items():
            times = step_times_ms(model, impl, args.steps, device)
            p50 = statistics.median(times)
            base = base or p50
            mark = "  <- build_optimizer" if impl == chosen else ""
            print(f"  {preset:10s} {label:8s} p50 {p50:8.2f} ms  min {min(times):8.2f} ms  "
                  f"loop/this {base / p50:5.2f}x{mark}")


if __name__ == "__main__":
    main()
