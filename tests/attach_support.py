"""Helpers for the attached-run tests: `cliplab train --server` started by hand as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


def demo_config(steps: int, eval_every: int = 1000) -> dict[str, Any]:
    cfg = yaml.safe_load((REPO / "contract" / "configs" / "cpu-demo.yaml").read_text())
    overrides = {
        "train": {"steps": steps, "batch_size": 8, "log_every": 1},
        "eval": {"every": eval_every, "batch_size": 8, "max_samples": 16, "matrix_size": 4},
        "checkpoint": {"every": 1000, "keep_last": 2},
        "data": {"num_workers": 0},
        "optim": {"warmup_steps": 2},
    }
    for section, values in overrides.items():
        cfg.setdefault(section, {}).update(values)
    cfg["name"] = "attached"
    return cfg


class Trainer:
    """`cliplab train CONFIG --run-dir DIR [--server URL]` as a subprocess (what a user types by hand)."""

    def __init__(self, tmp_path: Path, data_dir: Path, cfg: dict[str, Any], name: str = "run"):
        self.run_dir = tmp_path / name
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLAB_")}
        self.env.update(CLIPLAB_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc: subprocess.Popen | None = None
        self.log = tmp_path / f"{name}.log"

    def command(self, *extra: str, torchrun: int = 0) -> list[str]:
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(torchrun)]
                    if torchrun else [sys.executable])
        return [*launcher, "-m", "trainer", "train", str(self.config), "--run-dir", str(self.run_dir), *extra]

    def start(self, *extra: str, torchrun: int = 0, **env: str) -> "Trainer":
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command(*extra, torchrun=torchrun), cwd=REPO, env={**self.env, **env},
                                         stdout=out, stderr=subprocess.STDOUT)
        return self

    def run(self, *extra: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*extra), cwd=REPO, env={**self.env, **env}, capture_output=True,
                              text=True, timeout=timeout)

    def wait(self, timeout: float = 300) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def file_events(self) -> list[dict[str, Any]]:
        lines = (self.run_dir / "events.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture
def trainers(tmp_path: Path):
    started: list[Trainer] = []

    def make(data_dir: Path, cfg: dict[str, Any], name: str = "run") -> Trainer:
        trainer = Trainer(tmp_path, data_dir, cfg, name)
        started.append(trainer)
        return trainer

    yield make
    for trainer in started:
        trainer.kill()
