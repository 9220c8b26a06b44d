"""Training-step throughput: samples/s, step time, TFLOP/s (MFU on known GPUs) and peak memory for a preset.

The loop's own step, stripped to its timing: synthetic images and captions already on the device,
forward + backward (the trainer's forward_backward, so accumulation uses the cached-features method) +
grad clipping + AdamW step. Not a test; it prints one line per configuration.

    python bench/bench_train.py                                   # tiny-vit, batch 64, CPU fp32
    python bench/bench_train.py --preset ViT-B-32 --batch-size 16 --steps 5
    python bench/bench_train.py --preset ViT-B-32 --batch-size 512 --precision bf16   # on a GPU
    python bench/bench_train.py --preset ViT-B-32 --batch-size 256 --accum-steps 2 --grad-checkpointing

Captions are random tokens of --caption-tokens length (trimmed as the trainer trims them), so the text tower
costs what short captions cost. Peak memory: torch.cuda.max_memory_allocated on CUDA, the process's peak
resident set size on the CPU.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from contract.config import OptimConfig  # noqa: E402
from contract.presets import get_preset  # noqa: E402
from trainer.devices import resolve_device  # noqa: E402
from trainer.loss import ClipLoss  # noqa: E402
from trainer.model import build_model, trim_tokens  # noqa: E402
from trainer.training.metrics import peak_flops, train_flops_per_sample  # noqa: E402
from trainer.training.optim import build_optimizer, clamp_logit_scale, clip_gradients  # noqa: E402
from trainer.training.precision import resolve_precision  # noqa: E402
from trainer.training.step import forward_backward  # noqa: E402

EOT, SOT = 49407, 49406


def synthetic_batch(n: int, resolution: int, context: int, caption_tokens: int, device: torch.device,
                    seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, context, dtype=torch.long)
    tokens[:, 0] = SOT
    tokens[:, 1:caption_tokens - 1] = torch.randint(1, 40000, (n, caption_tokens - 2), generator=g)
    tokens[:, caption_tokens - 1] = EOT
    return {"image": torch.randn(n, 3, resolution, resolution, generator=g).to(device),
            "text": trim_tokens(tokens).to(device)}


def bench(preset: str, batch_size: int, accum_steps: int, steps: int, warmup: int, precision_name: str,
          device_name: str, grad_checkpointing: bool, compile_model: bool, caption_tokens: int) -> dict[str, float]:
    device = resolve_device(device_name)
    precision = resolve_precision(precision_name, device)
    torch.manual_seed(0)
    model = build_model(get_preset(preset)).to(device)
    if grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.train()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-5), device)
    scaler = precision.grad_scaler()
    loss_fn = ClipLoss()
    step_model = torch.compile(model) if compile_model else model
    micro = [synthetic_batch(batch_size, model.image_resolution, model.context_length, caption_tokens, device, i)
             for i in range(accum_steps)]
    flops = train_flops_per_sample(model, micro[0]["image"], micro[0]["text"])
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        forward_backward(step_model, loss_fn, micro, precision, scaler)
        if scaler is not None:
            scaler.unscale_(optimizer)
        clip_gradients(params, 1.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        clamp_logit_scale(model)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    samples_per_s = batch_size * accum_steps * steps / elapsed
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    out = {"samples_per_s": samples_per_s, "step_s": elapsed / steps, "peak_gb": peak_gb}
    if flops:
        out["tflops"] = flops * samples_per_s / 1e12
        peak = peak_flops(device)
        if peak:
            out["mfu"] = flops * samples_per_s / peak
    out.update(device=str(device), precision=precision.name, threads=torch.get_num_threads())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny-vit", help="comma-separated presets (default tiny-vit)")
    p.add_argument("--batch-size", default="64", help="per micro-step; comma-separated to sweep")
    p.add_argument("--accum-steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, compile, caches)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--caption-tokens", type=int, default=20, help="tokens per caption incl. start/end")
    args = p.parse_args(argv)
    for preset in args.preset.split(","):
        for bs in (int(b) for b in args.batch_size.split(",")):
            r = bench(preset, bs, args.accum_steps, args.steps, args.warmup, args.precision, args.device,
                      args.grad_checkpointing, args.compile, args.caption_tokens)
            extra = f" | {r['tflops']:.3f} TFLOP/s" if "tflops" in r else ""
            extra += f" | MFU {100 * r['mfu']:.1f}%" if "mfu" in r else ""
            print(f"{preset} batch {bs}x{args.accum_steps} {r['precision']} on {r['device']} "
                  f"({r['threads']} threads): {r['samples_per_s']:.1f} samples/s | {r['step_s'] * 1e3:.0f} ms/step"
                  f"{extra} | peak memory {r['peak_gb']:.2f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
