"""`cliplab eval`: evaluate a checkpoint on a val set and print the metrics.

    cliplab eval --checkpoint runs/demo/checkpoints/step_000600 --data ~/.cliplab/datasets/demo/val.csv
    cliplab eval --checkpoint runs/demo/checkpoints/best --data val.csv --device cuda:1
    cliplab eval --checkpoint ViT-B-32.pt --data val.csv --batch-size 256 --json

--data takes a val.csv/TSV (dataset.json beside it supplies classes and templates for zero-shot), a shard
pattern, or `demo`. Val images that cannot be read are left out and reported on stderr (and in --json).
Metric definitions: trainer/evaluate.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from dataset.images import own_pixel_check
from trainer.commands.flags import DEVICE_CHOICES, device_flag, non_negative_int, resolve_device_flag

EXIT_USAGE = 2
SKIPPED_SHOWN = 5  # unreadable val items named in the warning and the JSON


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH_OR_PRESET",
                        help="checkpoint file or directory (OpenAI, open_clip, cliplab), a run directory or its "
                             "checkpoints/latest or checkpoints/best, or a preset name")
    parser.add_argument("--data", required=True, metavar="VAL",
                        help="val.csv / .tsv, a shard pattern (dir/name-{000000..000009}.tar), or 'demo'")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="eval batch size; in-batch accuracy and similarity depend on it (default 64)")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate on the first N pairs only")
    parser.add_argument("--device", default="auto", type=device_flag,
                        help=f"{DEVICE_CHOICES} (default auto: cuda if available, else cpu)")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast for the forward passes (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--workers", type=non_negative_int, default=2,
                        help="data loader worker processes, 0 to read in this process (default 2)")
    parser.add_argument("--no-zeroshot", action="store_true", help="skip zero-shot classification")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def format_table(result: dict[str, float], batch_size: int, num_samples: int, seconds: float) -> str:
    """Aligned `name  value` lines; fractions are also shown as percentages."""
    width = max(len(k) for k in result)
    lines = [f"evaluated {num_samples} pairs in {seconds:.1f} s (in-batch metrics at batch size {batch_size})"]
    for name, value in result.items():
        shown = f"{value:.4f}" if name == "val/loss" else f"{value:.4f}  ({100 * value:.1f}%)"
        lines.append(f"  {name.ljust(width)}  {shown}")
    return "\n".join(lines)


def skipped_warning(skipped: list[tuple[str, str]]) -> str:
    """The stderr lines for val items evaluation left out: how many, and the first few as `path: reason`."""
    lines = [f"warning: {len(skipped)} unreadable val pair(s) skipped, not counted in the metrics:"]
    lines += [f"  {path}: {reason}" for path, reason in skipped[:SKIPPED_SHOWN]]
    if len(skipped) > SKIPPED_SHOWN:
        lines.append(f"  ... and {len(skipped) - SKIPPED_SHOWN} more")
    return "\n".join(lines)


def _why_no_zeroshot(dataset) -> str:
    """Why evaluate() left zero-shot out although it was asked for (the val set lacks what it needs)."""
    if not getattr(dataset, "classes", None):
        return ("the val set lists no class names (a dataset.json with \"classes\" beside it, as `cliplab "
                "prepare` writes)")
    return "no val image has a label (the label column is missing or -1)"


def _fail(message: str) -> int:
    print(f"cliplab eval: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    own_pixel_check()  # images are checked by name in dataset.images, not by Pillow's anonymous warning
    if args.batch_size < 2:
        return _fail(f"--batch-size must be at least 2 (in-batch metrics compare pairs), got {args.batch_size}")
    if args.max_samples is not None and args.max_samples < 2:
        return _fail(f"--max-samples must be at least 2, got {args.max_samples}")
    import trainer
    from contract.config import ConfigError, DataConfig, EvalConfig
    from trainer.checkpoint import CheckpointError
    from trainer.data import DataError, build_val_dataset
    from trainer.evaluate import evaluate
    from trainer.training.precision import resolve_precision

    try:
        device = resolve_device_flag(args.device)
        if args.precision == "fp16" and device.type != "cuda":
            return _fail(f"--precision fp16 needs a CUDA device (--device is {args.device}); use fp32 or bf16")
        precision = resolve_precision(args.precision, device)
        model, _ = trainer.load(args.checkpoint, device=device)
        data_cfg = DataConfig(val=args.data, num_workers=args.workers, context_length=model.context_length)
        dataset = build_val_dataset(data_cfg, model.image_resolution, log=lambda m: print(m, file=sys.stderr))
    except (CheckpointError, ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    cfg = EvalConfig(batch_size=args.batch_size, max_samples=args.max_samples, zeroshot=not args.no_zeroshot)
    start = time.perf_counter()
    try:
        result = evaluate(model, dataset, cfg, device, autocast=precision.autocast, num_workers=args.workers)
    except DataError as exc:  # a val set the metrics cannot use; anything else is a bug and keeps its traceback
        return _fail(f"cannot evaluate on --data {args.data}: {exc}")
    seconds = time.perf_counter() - start
    if result.skipped:
        print(f"cliplab eval: {skipped_warning(result.skipped)}", file=sys.stderr)
    if cfg.zeroshot and "val/zeroshot_top1" not in result:
        print(f"cliplab eval: note: no zero-shot metrics: {_why_no_zeroshot(dataset)}", file=sys.stderr)
    if args.json:
        examples = [{"path": path, "reason": reason} for path, reason in result.skipped[:SKIPPED_SHOWN]]
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), "values": dict(result),
                          "batch_size": result.batch_size, "num_samples": result.num_samples,
                          "skipped": len(result.skipped), "skipped_examples": examples,
                          "seconds": round(seconds, 3)}))
    else:
        print(format_table(result, result.batch_size, result.num_samples, seconds))
    return 0
