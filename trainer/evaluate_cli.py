"""`cliplab eval`: evaluate a checkpoint on a val set and print the metrics.

    cliplab eval --checkpoint runs/demo/checkpoints/step_000600 --data ~/.cliplab/datasets/demo/val.csv
    cliplab eval --checkpoint ViT-B-32.pt --data val.csv --batch-size 256 --json

--data takes a val.csv/TSV (dataset.json beside it supplies classes and templates for zero-shot), a shard
pattern, or `demo`. Metric definitions: trainer/evaluate.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="PATH_OR_PRESET",
                        help="checkpoint file or directory (OpenAI, open_clip, cliplab), or a preset name")
    parser.add_argument("--data", required=True, metavar="VAL",
                        help="val.csv / .tsv, a shard pattern (dir/name-{000000..000009}.tar), or 'demo'")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="eval batch size; in-batch accuracy and similarity depend on it (default 64)")
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate on the first N pairs only")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1 ...")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="autocast for the forward passes (auto: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--workers", type=int, default=2, help="data loader worker processes (default 2)")
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


def _fail(message: str) -> int:
    print(f"cliplab eval: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 2:
        return _fail(f"--batch-size must be at least 2 (in-batch metrics compare pairs), got {args.batch_size}")
    if args.max_samples is not None and args.max_samples < 2:
        return _fail(f"--max-samples must be at least 2, got {args.max_samples}")
    import torch

    import trainer
    from trainer.checkpoint import CheckpointError
    from trainer.config import ConfigError, DataConfig, EvalConfig
    from trainer.data import DataError, build_val_dataset
    from trainer.evaluate import evaluate
    from trainer.precision import resolve_device, resolve_precision

    try:
        default = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        device = resolve_device(args.device, default)
        precision = resolve_precision(args.precision, device)
        model, _ = trainer.load(args.checkpoint, device=device)
        data_cfg = DataConfig(val=args.data, num_workers=args.workers, context_length=model.context_length)
        dataset = build_val_dataset(data_cfg, model.image_resolution, log=lambda m: print(m, file=sys.stderr))
    except (CheckpointError, ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    cfg = EvalConfig(batch_size=args.batch_size, max_samples=args.max_samples, zeroshot=not args.no_zeroshot)
    start = time.perf_counter()
    result = evaluate(model, dataset, cfg, device, autocast=precision.autocast, num_workers=args.workers)
    seconds = time.perf_counter() - start
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), "values": dict(result),
                          "batch_size": result.batch_size, "num_samples": result.num_samples,
                          "seconds": round(seconds, 3)}))
    else:
        print(format_table(result, result.batch_size, result.num_samples, seconds))
    return 0
