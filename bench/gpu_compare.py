"""cliplab vs open_clip training throughput and peak memory in one process on one device, then end to end.

    python bench/gpu_compare.py                        # ViT-B-32, batch 512, bf16, on cuda:0
    python bench/gpu_compare.py --device cpu --tiny    # smoke mode: tiny-vit, batch 8, fp32, seconds on a CPU

1. Synthetic batches already on the device, captions of 10-20 tokens (realistic; cliplab trims the text to the
   longest caption, open_clip runs all 77 positions). Both libraries start from the same weights and train
   with the same optimizer (AdamW, cliplab's decay groups, the fused kernel where the device has one), each
   with its own loss, eager and under torch.compile. samples/s and peak memory per configuration, and the
   ratios cliplab / open_clip.
2. End to end: generated 500x375 JPEGs on disk through cliplab's loader (the image cache, and GPU JPEG
   decoding where CUDA has it) into the same cliplab step, as a fraction of its synthetic figure.
Prints one table. The step has no host syncs: the loss and grad norm stay on the device.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from bench.bench_data import generate_dataset  # noqa: E402
from contract.config import DataConfig, OptimConfig  # noqa: E402
from contract.presets import get_preset  # noqa: E402
from trainer.checkpoint import open_clip_model_config  # noqa: E402
from trainer.data import build_train_loader, gpu_decode_available  # noqa: E402
from trainer.loss import ClipLoss  # noqa: E402
from trainer.model import build_model, no_weight_decay_names, trim_tokens  # noqa: E402
from trainer.training.optim import adamw_implementation, clip_gradients, param_groups  # noqa: E402

SOT, EOT = 49406, 49407


@dataclass
class Figure:
    label: str
    samples_per_s: float
    peak_gib: float | None


def captions(n: int, context: int, generator: torch.Generator, shortest: int = 10, longest: int = 20) -> torch.Tensor:
    """[n, context] token ids: start, random words, end; lengths uniform in [shortest, longest]."""
    tokens = torch.zeros(n, context, dtype=torch.long)
    lengths = torch.randint(shortest, longest + 1, (n,), generator=generator)
    for i, length in enumerate(lengths.tolist()):
        tokens[i, 0], tokens[i, length - 1] = SOT, EOT
        tokens[i, 1:length - 1] = torch.randint(1, 40000, (length - 2,), generator=generator)
    return tokens


def build_pair(preset: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """cliplab's model and open_clip's CLIP of the same architecture holding the same weights."""
    from open_clip.model import CLIP as OpenClipCLIP

    torch.manual_seed(0)
    ours = build_model(get_preset(preset))
    theirs = OpenClipCLIP(**open_clip_model_config(ours.args))
    theirs.load_state_dict(ours.state_dict())
    return ours.to(device).train(), theirs.to(device).train()


def make_optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.AdamW:
    cfg = OptimConfig(lr=1e-5)
    # open_clip's CLIP has our parameter names: the same rule picks the same undecayed parameters.
    no_decay = no_weight_decay_names(model)
    groups = [{k: v for k, v in g.items() if k != "names"} for g in param_groups(model, cfg.weight_decay, no_decay)]
    impl = adamw_implementation(device, [p for g in groups for p in g["params"]])
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **impl)


def make_step(library: str, model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None,
              compiled: bool) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step of `library` (forward, its own loss, backward, clip, AdamW) without host syncs."""
    from open_clip.loss import ClipLoss as OpenClipLoss

    forward = torch.compile(model) if compiled else model
    loss_fn = ClipLoss() if library == "cliplab" else OpenClipLoss()
    optimizer = make_optimizer(model, device)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(images: torch.Tensor, text: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            image_features, text_features, scale = forward(images, text)[:3]
        loss_fn(image_features, text_features, scale).backward()
        clip_gradients(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable, batches: Callable[[int], tuple[torch.Tensor, torch.Tensor]], steps: int, warmup: int,
          batch_size: int, device: torch.device) -> tuple[float, float | None]:
    """samples/s over `steps` after `warmup` untimed steps, and the peak device memory (GiB) of the timed ones."""
    for i in range(warmup):
        step(*batches(i))
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for i in range(steps):
        step(*batches(warmup + i))
    sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return batch_size * steps / seconds, peak


def release(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synthetic(args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None) -> list[Figure]:
    figures = []
    g = torch.Generator().manual_seed(0)
    res = get_preset(args.preset).image_resolution
    images = torch.randn(args.batch_size, 3, res, res, generator=g).to(device)
    full_text = captions(args.batch_size, 77, g)
    texts = {"cliplab": trim_tokens(full_text).to(device), "open_clip": full_text.to(device)}
    for compiled in args.modes:
        for library in ("cliplab", "open_clip"):
            ours, theirs = build_pair(args.preset, device)
            model = ours if library == "cliplab" else theirs
            del ours, theirs
            step = make_step(library, model, device, dtype, compiled)
            rate, peak = timed(step, lambda i: (images, texts[library]), args.steps, args.warmup,
                               args.batch_size, device)
            figures.append(Figure(f"{library} {'compiled' if compiled else 'eager'}", rate, peak))
            del step, model
            release(device)
    return figures


def end_to_end(args: argparse.Namespace, device: torch.device, dtype: torch.dtype | None,
               folder: Path) -> list[Figure]:
    """cliplab's step fed by its own loader from JPEG files (image cache; GPU decoding on CUDA)."""
    res = get_preset(args.preset).image_resolution
    csv_path = generate_dataset(folder / "jpegs", args.e2e_images, 500, 375)
    modes = ["cache"] + (["gpu decode"] if device.type == "cuda" and gpu_decode_available()[0] else [])
    ours, _ = build_pair(args.preset, device)
    step = make_step("cliplab", ours, device, dtype, compiled=args.modes[-1])  # one compile for both modes
    figures = []
    for mode in modes:
        cfg = DataConfig(train=str(csv_path), val=None, num_workers=args.workers, cache=mode == "cache",
                         gpu_decode=mode == "gpu decode")
        loader = build_train_loader(cfg, args.batch_size, res, seed=0, device=device, data_dir=folder,
                                    log=lambda m: None)

        def batches(_: int) -> tuple[torch.Tensor, torch.Tensor]:
            batch = next(loader)
            text = trim_tokens(batch["text"])  # on the CPU copy, as the trainer does: no device sync
            return batch["image"].to(device, non_blocking=True), text.to(device, non_blocking=True)

        rate, peak = timed(step, batches, args.steps, args.warmup, args.batch_size, device)
        figures.append(Figure(f"cliplab end to end ({mode})", rate, peak))
        loader.close()
    del step, ours
    release(device)
    return figures


def print_table(figures: list[Figure], args: argparse.Namespace, device: torch.device) -> None:
    by_label = {f.label: f for f in figures}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{args.preset}, batch {args.batch_size}, {args.precision}, {name}, torch {torch.__version__}")
    print(f"{'configuration':34s} {'samples/s':>10s} {'peak GiB':>9s}  ratio")
    synthetic_best = max((f for f in figures if f.label.startswith("cliplab ") and "end" not in f.label),
                         key=lambda f: f.samples_per_s)
    for f in figures:
        peak = f"{f.peak_gib:9.2f}" if f.peak_gib is not None else f"{'-':>9s}"
        if f.label.startswith("cliplab end"):
            ratio = f"{f.samples_per_s / synthetic_best.samples_per_s:6.1%} of synthetic ({synthetic_best.label})"
        elif f.label.startswith("cliplab"):
            other = by_label.get(f.label.replace("cliplab", "open_clip"))
            ratio = f"{f.samples_per_s / other.samples_per_s:5.2f}x open_clip speed" if other else ""
            if other and f.peak_gib and other.peak_gib:
                ratio += f", {f.peak_gib / other.peak_gib:4.2f}x its memory"
        else:
            ratio = ""
        print(f"{f.label:34s} {f.samples_per_s:10.1f} {peak}  {ratio}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny-vit, batch 8, 2 steps, fp32, eager")
    p.add_argument("--preset", default="ViT-B-32")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compile, allocator, cache build)")
    p.add_argument("--modes", default="eager,compiled", help="subset of eager,compiled")
    p.add_argument("--e2e-images", type=int, default=3000, help="generated JPEGs for the end-to-end part")
    p.add_argument("--workers", type=int, default=8)
    args = p.parse_args(argv)
    if args.tiny:
        args.preset, args.batch_size, args.steps, args.warmup = "tiny-vit", 8, 2, 1
        args.precision, args.e2e_images, args.workers = "fp32", 24, 0
        if "--modes" not in (argv or sys.argv):
            args.modes = "eager"
    args.modes = [m.strip() == "compiled" for m in args.modes.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    figures = synthetic(args, device, dtype)
    with tempfile.TemporaryDirectory(prefix="cliplab-gpu-compare-") as tmp:
        figures += end_to_end(args, device, dtype, Path(tmp))
    print_table(figures, args, device)


if __name__ == "__main__":
    main()
