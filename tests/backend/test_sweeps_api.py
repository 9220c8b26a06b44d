"""POST /api/sweeps on a real `cliplab serve` (runs stay queued): the plan, the checks of every run before any is
created, the cap, and the same runs as `cliplab sweep` draws for the same seed."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tests.backend_fixtures import REPO

GRID = [{"key": "optim.lr", "values": "1e-4, 3e-4"}, {"key": "train.batch_size", "values": "8,16"}]
pytestmark = pytest.mark.slow  # a live server per test


def sweep(server: Any, **body: Any) -> Any:
    return server.post("/api/sweeps", json={"config": {"name": "s", "tags": ["mine"]}, "axes": GRID, **body})


def run_count(server: Any) -> int:
    return server.get("/api/runs").json()["total"]


def test_a_dry_run_plans_every_run_and_creates_none(live_server):
    answer = sweep(live_server, dry_run=True, tags=["lrbs"])
    assert answer.status_code == 200, answer.text
    plan = answer.json()
    assert plan["valid"] is True and plan["problems"] == [] and plan["created"] == []
    assert [r["name"] for r in plan["runs"]] == ["s-1 lr=1e-4 batch_size=8", "s-2 lr=1e-4 batch_size=16",
                                                 "s-3 lr=3e-4 batch_size=8", "s-4 lr=3e-4 batch_size=16"]
    assert plan["runs"][3]["overrides"] == {"optim.lr": "3e-4", "train.batch_size": 16}  # read as --set reads it
    assert plan["keys"] == ["optim.lr", "train.batch_size"] and plan["tag"] == "lrbs"
    assert plan["link"] == ("/#/runs?tag=lrbs&col=config:optim.lr&col=config:train.batch_size&col=best:val/loss"
                            "&sort=best:val/loss")  # the config's checkpoint.best_metric, lower is better
    assert run_count(live_server) == 0


def test_a_sweep_queues_every_run_with_its_settings_in_order(live_server):
    answer = sweep(live_server, tags=["lrbs"], gpus=0)
    assert answer.status_code == 201, answer.text
    created = answer.json()["created"]
    stored = sorted(live_server.get("/api/runs", params={"tag": "lrbs"}).json()["items"], key=lambda r: r["created_at"])
    assert [r["id"] for r in stored] == [r["id"] for r in created]
    assert [(r["config"]["optim"]["lr"], r["config"]["train"]["batch_size"]) for r in stored] == [
        (1e-4, 8), (1e-4, 16), (3e-4, 8), (3e-4, 16)]
    assert all(r["status"] == "queued" and r["tags"] == ["mine", "lrbs"] for r in stored)
    assert stored[0]["name"] == "s-1 lr=1e-4 batch_size=8"


def test_a_refused_value_in_the_last_run_creates_nothing_and_is_named(live_server):
    axes = [{"key": "optim.lr", "values": "1e-4,3e-4,1e-3"}, {"key": "train.batch_size", "values": "8,0"}]
    refused = sweep(live_server, axes=axes, name="bad")
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["detail"]
    assert problem["field"] == "train.batch_size"
    assert problem["message"].startswith("train.batch_size=0 (run “bad-2 lr=1e-4 batch_size=0”, and 2 other runs): ")
    assert run_count(live_server) == 0
    plan = sweep(live_server, axes=axes, name="bad", dry_run=True).json()  # the dry run says the same, with the plan
    assert plan["valid"] is False and plan["problems"] == [problem] and len(plan["runs"]) == 6

    only_last = [{"key": "data.train", "values": "demo, /etc/hosts"}]  # outside the readable folders, run 2 of 2
    refused = sweep(live_server, axes=only_last)
    assert refused.status_code == 422 and refused.json()["detail"][0]["message"].startswith("data.train=/etc/hosts")
    assert run_count(live_server) == 0


def test_the_cap_is_refused_before_the_sweep_is_listed(live_server):
    huge = [{"key": f"optim.k{i}", "values": ",".join(map(str, range(10)))} for i in range(10)]  # 10**10 runs
    started = time.monotonic()
    refused = sweep(live_server, axes=huge)
    assert refused.status_code == 422 and time.monotonic() - started < 10
    cap = {"field": "max_runs", "message": "the sweep makes 10000000000 runs, over the limit of 100: remove some "
                                           "values, or draw fewer runs at random"}
    assert refused.json()["detail"] == [cap]
    checked = sweep(live_server, axes=huge, dry_run=True)  # a dry run answers its verdict, as a form asks it
    assert checked.status_code == 200 and checked.json()["problems"] == [cap] and checked.json()["runs"] == []
    assert sweep(live_server, random=101).json()["detail"][0]["field"] == "max_runs"  # the default cap, 100
    drawn = sweep(live_server, axes=huge, random=50, dry_run=True).json()  # drawn without listing them
    assert len({tuple(r["overrides"].values()) for r in drawn["runs"]}) == 50
    assert run_count(live_server) == 0


def test_a_yaml_alias_bomb_in_a_swept_value_is_refused_at_once_with_a_small_answer(live_server):
    """9 levels of `[*a, *a, ...]` are ~400 bytes that expand to 9**9 values once copied or serialised."""
    levels = ["&l0 [x, x, x, x, x, x, x, x, x]"] + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb = {"key": "model.image_resolution", "values": "[" + ", ".join(levels) + "]"}
    started = time.monotonic()
    checked = sweep(live_server, axes=[bomb], dry_run=True)
    assert checked.status_code == 200 and len(checked.content) < 10_000 and time.monotonic() - started < 10
    [problem] = checked.json()["problems"]
    assert problem["field"] == "axes.0.values" and "aliases (*name) are not allowed" in problem["message"], problem
    assert sweep(live_server, axes=[bomb]).status_code == 422 and run_count(live_server) == 0


@pytest.mark.parametrize("axes, field, words", [
    ([{"key": "optim.lr", "values": "loguniform(0,1)"}], "axes.0.values", "bounds above 0"),
    ([{"key": "optim.lr", "values": "uniform(0.1,0.2)"}], "axes.0.values", "only in a random sweep"),
    ([{"key": "optim.lr", "values": "1"}, {"key": "optim.lr", "values": "2"}], "axes.1.key", "swept twice"),
    ([{"key": "name", "values": "a,b"}], "axes.0.key", "sets each run's name itself"),
    ([{"key": "optim.lr", "values": "1e-4,,3e-4"}], "axes.0.values", "an empty value"),
    ([{"key": "optim.lr", "values": ".nan"}], "axes.0.values", "not a finite number"),
    ([], "axes", "nothing to sweep"),
])
def test_a_sweep_that_cannot_be_listed_names_its_field(live_server, axes, field, words):
    refused = sweep(live_server, axes=axes)
    assert refused.status_code == 422, refused.text
    [problem] = refused.json()["detail"]
    assert problem["field"] == field and words in problem["message"], problem
    checked = sweep(live_server, axes=axes, dry_run=True).json()
    assert checked["valid"] is False and checked["problems"] == [problem]


def test_the_cli_and_the_api_draw_the_same_runs_for_a_seed(live_server):
    axes = [{"key": "optim.lr", "values": "loguniform(1e-5,1e-3)"}, {"key": "train.batch_size", "values": "randint(4,64)"},
            {"key": "optim.weight_decay", "values": "0,0.05,0.1"}]
    cmd = [sys.executable, "-m", "trainer", "sweep", "cpu-demo", "--name", "same", "--random", "6",
           "--random-seed", "11", "--tag", "cli", "--server", live_server.base_url]
    done = subprocess.run(cmd + [f"--grid={a['key']}={a['values']}" for a in axes], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    cli = sorted(live_server.get("/api/runs", params={"tag": "cli"}).json()["items"], key=lambda r: r["created_at"])
    config = live_server.get("/api/configs").json()[0]["config"]  # cpu-demo, as the New run page starts from it
    plan = live_server.post("/api/sweeps", json={"config": config, "axes": axes, "random": 6, "seed": 11,
                                                 "name": "same", "dry_run": True}).json()
    assert [r["name"] for r in cli] == [r["name"] for r in plan["runs"]]
    for run, planned in zip(cli, plan["runs"]):
        got = {k: run["config"][k.split(".")[0]][k.split(".")[1]] for k in planned["overrides"]}
        assert got == planned["overrides"]
