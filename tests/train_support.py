"""Helpers for the training tests: a tiny generated image-caption dataset and a tiny-vit config."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("square", "circle")
REPO = Path(__file__).resolve().parents[1]


def make_dataset(root: Path, train_per_class: int = 6, val_per_class: int = 2, size: int = 40) -> Path:
    """Write <root>/train.csv, val.csv, dataset.json and JPEGs: 8 classes (colour x shape). Returns root."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    classes = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    splits: dict[str, list[tuple[str, str, int]]] = {"train": [], "val": []}
    for label, name in enumerate(classes):
        colour, shape = name.split()
        for i in range(train_per_class + val_per_class):
            img = Image.new("RGB", (size, size), tuple(rng.randrange(90, 160) for _ in range(3)))
            draw = ImageDraw.Draw(img)
            r = rng.randrange(size // 5, size // 3)
            cx, cy = rng.randrange(r, size - r), rng.randrange(r, size - r)
            box = (cx - r, cy - r, cx + r, cy + r)
            (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
            rel = f"images/{label}_{i}.jpg"
            img.save(root / rel, quality=90)
            split = "train" if i < train_per_class else "val"
            splits[split].append((rel, f"a photo of a {name}.", label))
    for split, rows in splits.items():
        if split == "train":
            rng.shuffle(rows)
        else:  # classes interleaved, as prepared val sets are
            rows.sort(key=lambda r: (int(Path(r[0]).stem.split("_")[1]), r[2]))
        with (root / f"{split}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["filepath", "caption", "label"])
            w.writerows(rows)
    info = {"name": root.name, "source": "test", "classes": classes, "templates": ["a photo of a {}."],
            "counts": {k: len(v) for k, v in splits.items()}, "created": 0}
    (root / "dataset.json").write_text(json.dumps(info))
    return root


def tiny_config(data_root: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A tiny-vit config over the dataset at `data_root` that runs a step in well under a second on one core."""
    cfg: dict[str, Any] = {
        "name": "t",
        "model": {"preset": "tiny-vit"},
        "data": {"train": str(data_root / "train.csv"), "val": str(data_root / "val.csv"), "num_workers": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "steps": 8, "log_every": 1, "seed": 0},
        "eval": {"every": 4, "batch_size": 8, "matrix_size": 4},
        "checkpoint": {"every": 4, "keep_last": 2},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_env(data_dir: Path) -> dict[str, str]:
    """Environment for a trainer subprocess: one thread per process, no backend, a private data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLAB_")}
    env.update(CLIPLAB_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def trainer_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", "train", *args]


def run_trainer(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(trainer_command(*args), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def one_torch_thread():
    """Generator for a module fixture: one intra-op thread while the module runs. On a loaded 2-core machine,
    two spinning threads per op make tiny models several times slower, not faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
