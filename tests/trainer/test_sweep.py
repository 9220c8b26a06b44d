"""`cliplab sweep`: real sweeps launched on a real `cliplab serve` through its POST /api/sweeps (which keeps the
runs queued: these tests start no trainers). The grid and the draws themselves: tests/contract/test_sweep.py."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from urllib.parse import parse_qsl, urlsplit

import pytest

from contract.sweep import parse_axis, sweep_points

from tests.backend_fixtures import REPO, free_port


def sweep(*args: str, server=None, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer", "sweep", "cpu-demo", *args]
    if server is not None:
        cmd += ["--server", server.base_url]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def runs_tagged(server, tag: str) -> list[dict]:
    return [r for r in server.get("/api/runs", params={"limit": 500}).json()["items"] if tag in r["tags"]]


@pytest.mark.slow
def test_a_grid_sweep_creates_every_run_tagged_with_its_config(live_server):
    done = sweep("--grid", "optim.lr=1e-4,3e-4", "--grid", "train.batch_size=8,16", "--set", "train.steps=7",
                 "--name", "lrbs", "--tag", "sweep-lrbs", server=live_server)
    assert done.returncode == 0, done.stderr
    runs = runs_tagged(live_server, "sweep-lrbs")
    assert len(runs) == 4
    got = sorted((r["config"]["optim"]["lr"], r["config"]["train"]["batch_size"]) for r in runs)
    assert got == [(1e-4, 8), (1e-4, 16), (3e-4, 8), (3e-4, 16)]
    assert all(r["config"]["train"]["steps"] == 7 and r["status"] == "queued" for r in runs)
    assert sorted(r["name"] for r in runs) == ["lrbs-1 lr=1e-4 batch_size=8", "lrbs-2 lr=1e-4 batch_size=16",
                                               "lrbs-3 lr=3e-4 batch_size=8", "lrbs-4 lr=3e-4 batch_size=16"]
    for r in runs:
        assert r["id"] in done.stdout
    link = done.stdout.strip().splitlines()[-1].split(": ", 1)[1]
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == live_server.base_url
    query = parse_qsl(parts.fragment.split("?", 1)[1])
    assert ("tag", "sweep-lrbs") in query
    assert {v for k, v in query if k == "col"} == {"config:optim.lr", "config:train.batch_size", "best:val/loss"}
    assert ("sort", "best:val/loss") in query  # the config's checkpoint.best_metric, lower is better


@pytest.mark.slow
def test_a_config_the_server_refuses_launches_nothing(live_server, tmp_path):
    # Valid here, but outside the folders the server may read: the server's check refuses it before any run.
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("filepath,caption\n")
    done = sweep("--grid", f"data.train=demo,{outside}", server=live_server)
    assert done.returncode == 2
    assert f"the server refuses data.train={outside} (run “cpu-demo-2 train=" in done.stderr, done.stderr
    assert "nothing was launched" in done.stderr
    assert live_server.get("/api/runs").json()["items"] == []


@pytest.mark.slow
def test_a_random_sweep_and_its_dry_run_agree(live_server):
    args = ("--grid", "optim.lr=loguniform(1e-5,1e-3)", "--random", "3", "--random-seed", "5", "--tag", "rnd")
    dry = sweep(*args, "--dry-run", server=live_server)
    assert dry.returncode == 0, dry.stderr
    assert "the server accepts all 3 runs; nothing launched" in dry.stdout
    assert live_server.get("/api/runs").json()["items"] == []
    done = sweep(*args, server=live_server)
    assert done.returncode == 0, done.stderr
    names = sorted(r["name"] for r in runs_tagged(live_server, "rnd"))
    assert names == sorted(line.strip() for line in dry.stdout.splitlines()[:3])
    lrs = [r["config"]["optim"]["lr"] for r in runs_tagged(live_server, "rnd")]
    assert all(1e-5 <= lr <= 1e-3 for lr in lrs) and len(set(lrs)) == 3
    expected = sorted(p["optim.lr"] for p in sweep_points([parse_axis(args[1])], 3, 5))
    assert sorted(lrs) == pytest.approx(expected)
    assert not any(math.isnan(lr) for lr in lrs)


@pytest.mark.parametrize("args, problem", [
    (("--grid", "optim.lr=abc"), "optim.lr"),
    (("--grid", "optim.lr=1,2,3", "--grid", "train.batch_size=1,2", "--max-runs", "5"), "makes 6 runs"),
    ((), "nothing to sweep"),
])
def test_bad_sweeps_exit_2_before_reaching_the_server(args, problem):
    closed = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "trainer", "sweep", "cpu-demo", *args, "--server", closed],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and problem in done.stderr, done.stderr


def test_an_unreachable_server_is_exit_1_and_a_sweep_without_one_is_exit_2():
    closed = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "trainer", "sweep", "cpu-demo", "--grid", "optim.lr=1e-4",
                           "--server", closed], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "cannot reach the dashboard" in done.stderr, done.stderr
    alone = subprocess.run([sys.executable, "-m", "trainer", "sweep", "cpu-demo", "--grid", "optim.lr=1e-4"],
                           cwd=REPO, capture_output=True, text=True, timeout=60,
                           env={k: v for k, v in os.environ.items() if k != "CLIPLAB_SERVER"})
    assert alone.returncode == 2 and "--server URL" in alone.stderr


def test_draws_are_independent_of_python_hash_seed():
    # random.Random(seed) alone decides the draws: the same sweep in two processes names the same runs.
    outs = [subprocess.run([sys.executable, "-m", "trainer", "sweep", "cpu-demo", "--grid", "optim.lr=1,2,3",
                            "--random", "2", "--dry-run", "--tag", "t"], cwd=REPO, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout
            for seed in (1, 2)]
    assert outs[0] == outs[1] and "2 runs" in outs[0]
