"""Data-loading throughput: images/s (and per decoding core) for the plain loader, the image cache and,
on a CUDA machine, GPU JPEG decoding. Not a test; it prints a table.

    python bench/bench_data.py                                  # generated 400x300 JPEGs
    python bench/bench_data.py --source demo --resolution 64    # the built-in demo dataset
    python bench/bench_data.py --source path/to/train.csv --workers 0,4,8 --batch-size 128

"per core" divides by the processes that decode (the workers, or 1 when the main process does it); for GPU
decoding the workers only read files, so it is a per-reader figure.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from contract.config import DataConfig  # noqa: E402
from trainer.data import build_train_loader, gpu_decode_available  # noqa: E402


def generate_dataset(folder: Path, n: int, width: int, height: int) -> Path:
    """n photo-like JPEGs (smooth colour fields + noise, quality 90) and a train.csv; reused if present."""
    csv_path = folder / "train.csv"
    if csv_path.is_file() and len(csv_path.read_text().splitlines()) == n + 1:
        return csv_path
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["filepath,caption,label"]
    for i in range(n):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / "images" / f"{i:06d}.jpg", quality=90)
        rows.append(f"images/{i:06d}.jpg,a generated picture number {i % 100},{i % 100}")
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path


def measure(cfg: DataConfig, args: argparse.Namespace, data_dir: Path, device: torch.device | None) -> dict:
    start = time.perf_counter()
    loader = build_train_loader(cfg, args.batch_size, args.resolution, seed=0, device=device, data_dir=data_dir,
                                log=lambda m: print(f"    [data] {m}"))
    setup = time.perf_counter() - start
    for _ in range(args.warmup):
        next(loader)
    images = 0
    start = time.perf_counter()
    for _ in range(args.batches):
        batch = next(loader)
        images += batch["image"].shape[0]
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    loader.close()
    return {"images_per_s": images / seconds, "setup_s": setup}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="generate", help="'generate', 'demo', or a train.csv path")
    p.add_argument("--n", type=int, default=1500, help="generated images")
    p.add_argument("--image-size", default="400x300", help="generated image WxH")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts to try")
    p.add_argument("--batches", type=int, default=20, help="timed batches per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first (worker start, page cache)")
    p.add_argument("--modes", default="plain,cache,gpu", help="subset of plain,cache,gpu")
    p.add_argument("--data-dir", default=None, help="where the cache (and a generated dataset) go; default a temp dir")
    args = p.parse_args(argv)

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="cliplab-bench-"))
    if args.source == "generate":
        w, h = (int(v) for v in args.image_size.lower().split("x"))
        train = str(generate_dataset(data_dir / "generated", args.n, w, h))
    else:
        train = args.source
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else None
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    workers = [int(w) for w in args.workers.split(",")]
    print(f"data {train}; resolution {args.resolution}; batch {args.batch_size}; {os.cpu_count()} CPUs visible; "
          f"torch {torch.__version__}; device {torch.cuda.get_device_name() if cuda else 'cpu'}")
    print(f"{'mode':<6} {'workers':>7} {'images/s':>10} {'per core':>9} {'setup s':>8}")
    for mode in modes:
        if mode == "gpu" and not gpu_decode_available()[0]:
            print(f"{'gpu':<6} {'-':>7} {'n/a':>10} {'':>9} {'':>8}  ({gpu_decode_available()[1]})")
            continue
        for n_workers in workers:
            cfg = DataConfig(train=train, val=None, num_workers=n_workers, cache=mode == "cache",
                             gpu_decode=mode == "gpu")
            r = measure(cfg, args, data_dir, device)
            per_core = r["images_per_s"] / max(1, n_workers)
            print(f"{mode:<6} {n_workers:>7} {r['images_per_s']:>10.0f} {per_core:>9.0f} {r['setup_s']:>8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
