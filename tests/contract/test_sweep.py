"""contract/sweep.py: the one copy of a sweep's maths (axis specs, grid, seeded draws, the cap, run names) that
`cliplab sweep` and POST /api/sweeps (the dashboard's sweep form) share."""

from __future__ import annotations

import pytest

from contract.sweep import (
    SweepError,
    base_name,
    default_tag,
    parse_axis,
    run_names,
    sweep_points,
    table_link,
)


def test_grid_is_every_combination_in_order():
    axes = [parse_axis("optim.lr=1e-4,3e-4"), parse_axis("train.batch_size=8, 16, 32", 1)]
    points = sweep_points(axes, None, 0)
    assert points == [{"optim.lr": lr, "train.batch_size": bs} for lr in ("1e-4", "3e-4") for bs in (8, 16, 32)]


def test_values_read_as_set_reads_them():
    assert parse_axis("eval.recall_at=[[1,5],[1,10]]").values == ([1, 5], [1, 10])
    assert parse_axis("model.freeze_text=true,false").values == (True, False)
    assert parse_axis("output_dir=2024,x").values == ("2024", "x")  # a text field keeps the text as written
    assert parse_axis("optim.lr=0.001").values == (0.001,)


@pytest.mark.parametrize("spec, field, problem", [
    ("optim.lr", "axes.0", "must look like key.path=value1,value2"),
    ("optim.lr=1e-4,1e-4", "axes.0.values", "listed twice"),
    ("optim.lr=[]", "axes.0.values", "non-empty YAML list"),
    ("optim.lr=1e-4,,3e-4", "axes.0.values", "an empty value"),
    ("optim.lr=.inf", "axes.0.values", "not a finite number"),
    ("optim.lr=" + "[" * 3000, "axes.0.values", "nested too deeply"),
    ("optim.lr=loguniform(0,1)", "axes.0.values", "bounds above 0"),
    ("optim.lr=uniform(1,0.5)", "axes.0.values", "low < high"),
    ("optim.lr=uniform(-1e308,1e308)", "axes.0.values", "finite bounds"),
    ("train.batch_size=randint(1,x)", "axes.0.values", "two whole numbers"),
    ("tags=[a],[b]", "axes.0.key", "sets each run's tags itself"),
    ("optim lr=1", "axes.0.key", "not a dotted config key"),
])
def test_bad_axes_are_named_with_their_field(spec, field, problem):
    with pytest.raises(SweepError, match=problem.replace("(", r"\(").replace(")", r"\)")) as caught:
        parse_axis(spec)
    assert caught.value.field == field


def test_random_draws_stay_in_their_ranges_and_repeat_with_the_seed():
    axes = [parse_axis("optim.lr=loguniform(1e-5,1e-3)"), parse_axis("train.batch_size=randint(4,9)", 1),
            parse_axis("optim.weight_decay=0.0,0.1", 2)]
    points = sweep_points(axes, 400, seed=7, max_runs=None)
    lrs = [p["optim.lr"] for p in points]
    assert all(1e-5 * 0.9999 <= lr <= 1e-3 * 1.0001 for lr in lrs)
    # log-uniform: about half the draws below the geometric middle (1e-4), not ~10% as a uniform draw gives
    below = sum(lr < 1e-4 for lr in lrs) / len(lrs)
    assert 0.4 < below < 0.6, below
    assert {p["train.batch_size"] for p in points} == set(range(4, 10))
    assert {p["optim.weight_decay"] for p in points} == {0.0, 0.1}
    assert sweep_points(axes, 400, seed=7, max_runs=None) == points
    assert sweep_points(axes, 400, seed=8, max_runs=None) != points


def test_a_seed_draws_what_it_drew_before_the_sweep_moved_here():
    # random.Random(seed), 4 significant digits: the draws `cliplab sweep --random-seed 5` has always made.
    points = sweep_points([parse_axis("optim.lr=loguniform(1e-5,1e-3)")], 3, 5)
    assert points == [{"optim.lr": 0.0001761}, {"optim.lr": 0.0003045}, {"optim.lr": 0.0003894}]


def test_random_over_lists_only_draws_distinct_combinations():
    axes = [parse_axis("optim.lr=1,2,3"), parse_axis("train.batch_size=8,16", 1)]
    points = sweep_points(axes, 6, seed=0)
    assert len({tuple(p.values()) for p in points}) == 6
    with pytest.raises(SweepError, match="only 6 different combinations") as caught:
        sweep_points(axes, 7, seed=0)
    assert caught.value.field == "random"


def test_a_huge_grid_is_refused_before_it_is_listed():
    axes = [parse_axis(f"k{i}=" + ",".join(map(str, range(10))), i) for i in range(10)]  # 10**10 combinations
    with pytest.raises(SweepError, match="makes 10000000000 runs, over the limit of 100") as caught:
        sweep_points(axes, None, 0)
    assert caught.value.field == "max_runs"
    with pytest.raises(SweepError, match="makes 101 runs, over the limit of 100"):
        sweep_points(axes, 101, 0)
    points = sweep_points(axes, 50, 0)  # drawn without listing them
    assert len({tuple(p.values()) for p in points}) == 50


def test_ranges_need_random_and_keys_are_named_once():
    with pytest.raises(SweepError, match="only in a random sweep"):
        sweep_points([parse_axis("optim.lr=uniform(0.1,0.2)")], None, 0)
    with pytest.raises(SweepError, match="optim.lr is swept twice") as caught:
        sweep_points([parse_axis("optim.lr=1"), parse_axis("optim.lr=2", 1)], None, 0)
    assert caught.value.field == "axes.1.key"
    with pytest.raises(SweepError, match="nothing to sweep"):
        sweep_points([], None, 0)


def test_run_names_number_the_runs_and_spell_values_as_written():
    points = sweep_points([parse_axis("model.pretrained=null,/a/very/long/path/to/a/checkpoint.pt"),
                           parse_axis("model.freeze_text=true,false", 1), parse_axis("optim.lr=0.0003,1e-3", 2)],
                          None, 0)
    names = run_names("lr", points)
    assert names[0] == "lr-1 pretrained=null freeze_text=true lr=0.0003"
    assert names[7] == "lr-8 pretrained=/a/very/long/path/to/a/… freeze_text=false lr=1e-3"
    assert run_names("x", [{"optim.lr": i} for i in range(10)])[0] == "x-01 lr=0"


def test_the_base_name_tag_and_link():
    assert base_name({"name": "cfg"}) == "cfg" and base_name({"name": "cfg"}, "mine") == "mine"
    assert base_name({}) == "demo" and base_name({"name": 2024}) == "2024"
    assert default_tag("x" * 200).startswith("sweep-xxx") and len(default_tag("x" * 200)) == 64
    assert default_tag("lr", 0).startswith("sweep-lr-")
    assert table_link("sweep a", ["optim.lr"], "val/acc") == (
        "/#/runs?tag=sweep%20a&col=config:optim.lr&col=best:val/acc&sort=-best:val/acc")
