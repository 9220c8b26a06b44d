"""Extreme and degenerate data in the dashboard: charts of constant series at extreme magnitudes, spans near
Number.MAX_VALUE, metrics that are NaN/inf from their first step or diverge part-way, and config values too
long for their column on the compare page.

Runs are registered through the public attach API and their events posted with the run's token, as
`cliplab sync` does (non-finite values travel as null, as the trainer sends them), so nothing trains.
Run: python -m pytest -q tests/frontend/test_degenerate_series.py
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from typing import Any, Iterator

import pytest

from tests.backend_fixtures import AppServer, served_app
from tests.browser_fixtures import browser, console, page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MAX = 1.7976931348623157e308  # Number.MAX_VALUE
LONG_PATH = "/mnt/datasets/" + "/".join(f"shard-group-{i:03d}" for i in range(20)) + "/train.csv"  # ~300 chars
LONG_WORD = "x" * 300  # no place to break at all
STEPS = 60
DIVERGES_AT = 30

CONSTANTS = {"c_1e308": 1e308, "c_max": MAX, "c_neg_max": -MAX, "c_1e-300": 1e-300, "c_2p48": float(2 ** 48)}


def series_values(step: int) -> dict[str, float | None]:
    return {**CONSTANTS,
            "span_max": MAX if step % 2 else -MAX,  # the whole float range, every other step
            "huge_and_small": 1e-5 if step % 2 else 1e306,
            "nan_loss": None,  # a run that diverged before its first logged step
            "diverging": 1.0 / (step + 1) if step < DIVERGES_AT else None}


def attach(server: AppServer, config: dict[str, Any], events: list[dict[str, Any]]) -> str:
    r = server.client.post("/api/runs/attach", json={"config": config, "run_dir": "/elsewhere/degenerate",
                                                      "host": "laptop", "live": False})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["token"]
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return run_id


def metric_events(values_at: Any, steps: int = STEPS) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    def add(kind: str, **body: Any) -> None:
        events.append({"seq": len(events) + 1, "time": time.time() - 600 + len(events), "kind": kind, **body})

    add("status", status="running", step=0)
    for step in range(steps):
        add("metric", step=step, total_steps=100, values=values_at(step))
    add("status", status="failed", reason="loss became NaN", step=steps - 1)
    return events


@pytest.fixture(scope="module")
def degenerate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with served_app(tmp_path_factory.mktemp("degenerate-dashboard")) as server:
        runs = {
            "extreme": attach(server, {"name": "extreme", "train": {"steps": 100}}, metric_events(series_values)),
            "long_path": attach(server, {"name": "long path", "data": {"train": LONG_PATH, "val": LONG_WORD}},
                                metric_events(lambda s: {"loss": 1.0 / (s + 1)}, 3)),
            "short_path": attach(server, {"name": "short path", "data": {"train": "demo"}},
                                 metric_events(lambda s: {"loss": 2.0 / (s + 1)}, 3)),
        }
        yield {"server": server, "base": server.base_url, "runs": runs}


def test_config_diff_keeps_the_setting_names_readable_beside_a_300_character_value(degenerate, page, console):
    ids = ",".join(degenerate["runs"][k] for k in ("long_path", "short_path"))
    page.goto(f"{degenerate['base']}/#/compare?ids={ids}")
    page.wait_for_selector(".diff-table tbody th")
    cells = page.evaluate("""() => [...document.querySelectorAll('.diff-table tbody tr')].map((tr) => {
        const th = tr.querySelector('th'), range = document.createRange();
        range.selectNodeContents(th.firstChild);
        return {key: th.firstChild.textContent, width: th.getBoundingClientRect().width,
                lines: range.getClientRects().length,
                valueWidths: [...tr.querySelectorAll('td')].map((td) => td.getBoundingClientRect().width)};
    })""")
    rows = {c["key"]: c for c in cells}
    assert {"data.train", "data.val"} <= set(rows), list(rows)
    for key in ("data.train", "data.val", "name"):
        # The key column stays wide enough for a setting name on one line (≥ 150 px at 1280 px wide) ...
        assert rows[key]["width"] >= 150 and rows[key]["lines"] == 1, rows[key]
    # ... and the long values wrap in their own columns instead of pushing the table past the card.
    table = page.evaluate("""() => { const w = document.querySelector('#config-diff .table-wrap');
        return {scroll: w.scrollWidth, client: w.clientWidth}; }""")
    assert table["scroll"] <= table["client"] + 1, table
    screenshot(page, "degenerate-compare-long-config-values", "#config-diff")
    console.assert_clean()


SI = {"f": 1e-15, "p": 1e-12, "n": 1e-9, "μ": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def tick_value(label: str) -> float:
    """A Plotly tick label as a number: `−1.85`, `270T`, `0.96×10​−300​`."""
    text = label.replace("\u2212", "-").replace("\u200b", "").strip()
    if "×10" in text:
        mantissa, exponent = text.split("×10")
        return float(mantissa) * 10.0 ** int(exponent)
    return float(text[:-1]) * SI[text[-1]] if text[-1] in SI else float(text)


def open_run_charts(page: Any, base: str, run_id: str) -> None:
    page.goto(f"{base}/#/runs/{run_id}")
    page.wait_for_function("() => document.querySelectorAll('.chart-card .main-svg').length >= 9")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart-card .chart-status')].every((s) => s.textContent)")


def chart_facts(page: Any, metric: str) -> dict[str, Any]:
    """What the chart of `metric` shows: its y tick labels, y title (the power of ten its values are drawn in),
    annotations, shapes, status line and whether its line has a drawn path."""
    return page.evaluate("""(key) => {
        const card = document.querySelector(`.chart-card[data-chart="${key}"]`), plot = card.querySelector('.plot');
        const title = plot.layout.yaxis.title?.text || '';
        return {ticks: [...card.querySelectorAll('.ytick text')].map((t) => t.textContent),
                exponent: Number((title.match(/<sup>(-?\\d+)<\\/sup>/) || [0, 0])[1]),
                annotations: [...card.querySelectorAll('.annotation-text')].map((t) => t.textContent),
                shapes: (plot.layout.shapes || []).map((s) => ({type: s.type, x0: s.x0, x1: s.x1})),
                status: card.querySelector('.chart-status').textContent,
                line: [...card.querySelectorAll('.scatterlayer path.js-line')].map((p) => p.getAttribute('d') || '')
                    .find((d) => d.length > 10) || ''};
    }""", f"metric:{metric}")


@pytest.mark.parametrize("metric", sorted(CONSTANTS))
def test_a_constant_series_at_an_extreme_magnitude_gets_finite_distinct_ticks_around_its_value(
        degenerate, page, console, metric):
    open_run_charts(page, degenerate["base"], degenerate["runs"]["extreme"])
    facts = chart_facts(page, metric)
    # In the units the chart draws (10^exponent, named in its y title): 1.85 × 10^308 is no float.
    value = CONSTANTS[metric] / 10.0 ** facts["exponent"]
    ticks = [tick_value(t) for t in facts["ticks"]]
    assert len(ticks) >= 3 and len(set(facts["ticks"])) == len(ticks), facts
    assert all(math.isfinite(t) for t in ticks), facts
    # A small range around the value: it lies within the ticks' span, which is a few percent of it wide.
    assert min(ticks) <= value <= max(ticks) and (max(ticks) - min(ticks)) <= 0.25 * abs(value), (value, facts)
    assert "NaN" not in facts["line"] and facts["line"], f"no line drawn for {metric}: {facts}"
    if metric == "c_max":
        screenshot(page, "degenerate-constant-near-max-value", f".chart-card[data-chart='metric:{metric}']")
    console.assert_clean()


def test_series_spanning_the_whole_float_range_keep_finite_ticks_and_their_line(degenerate, page, console):
    open_run_charts(page, degenerate["base"], degenerate["runs"]["extreme"])
    for metric, (lo, hi) in {"span_max": (-MAX, MAX), "huge_and_small": (1e-5, 1e306)}.items():
        facts = chart_facts(page, metric)
        unit = 10.0 ** facts["exponent"]
        ticks = [tick_value(t) for t in facts["ticks"]]
        assert len(set(ticks)) >= 3 and all(math.isfinite(t) for t in ticks), facts
        assert min(ticks) <= max(lo, -hi * 0.5) / unit and max(ticks) >= hi * 0.5 / unit, (metric, facts)
        assert facts["line"] and "NaN" not in facts["line"], facts
    # The hover reads the values as logged, not in the axis' units.
    drag = page.locator(".chart-card[data-chart='metric:span_max'] .nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    hover = page.wait_for_function("""() => document.querySelector(
        ".chart-card[data-chart='metric:span_max'] .hoverlayer").textContent""").json_value()
    assert re.search(r"1\.7977e\+308", hover), hover
    screenshot(page, "degenerate-span-of-the-float-range", ".chart-card[data-chart='metric:span_max']")
    console.assert_clean()


def test_a_metric_that_is_nan_from_its_first_step_says_no_finite_values_not_no_points_yet(degenerate, page, console):
    open_run_charts(page, degenerate["base"], degenerate["runs"]["extreme"])
    facts = chart_facts(page, "nan_loss")
    text = " ".join(facts["annotations"])
    assert "no points yet" not in text
    assert f"no finite values: {STEPS} NaN/inf values (steps 0–{STEPS - 1})" in text, facts
    assert f"{STEPS} NaN/inf" in facts["status"], facts
    # Steps, not one tick per step: the run logged 60 of them.
    assert len(facts["shapes"]) == 2 and facts["shapes"][0]["x1"] == STEPS - 1, facts
    screenshot(page, "degenerate-nan-only-metric", ".chart-card[data-chart='metric:nan_loss']")
    console.assert_clean()


def test_a_diverging_metric_marks_where_it_went_non_finite(degenerate, page, console):
    open_run_charts(page, degenerate["base"], degenerate["runs"]["extreme"])
    facts = chart_facts(page, "diverging")
    assert facts["line"] and f"{DIVERGES_AT} pts" in facts["status"], facts
    assert f"{STEPS - DIVERGES_AT} NaN/inf" in facts["status"], facts
    assert "NaN/inf" in facts["annotations"], facts
    assert {"type": "line", "x0": DIVERGES_AT, "x1": DIVERGES_AT} in facts["shapes"], facts
    screenshot(page, "degenerate-diverging-metric", ".chart-card[data-chart='metric:diverging']")
    # On the time axis the mark moves with it (a date, not a step).
    page.check("input[name='xmode'][value='time']")
    page.wait_for_function("""() => {
        const plot = document.querySelector('.chart-card[data-chart="metric:diverging"] .plot');
        return plot.layout.xaxis.type === 'date' && plot.layout.shapes.length === 2; }""")
    shapes = chart_facts(page, "diverging")["shapes"]
    assert all(isinstance(s["x0"], datetime) for s in shapes), shapes
    drawn = page.evaluate("""() => [...document.querySelectorAll(
        '.chart-card[data-chart="metric:diverging"] .shapelayer path')].map((p) => p.getAttribute('d'))""")
    assert len(drawn) == 2 and not any("NaN" in d for d in drawn), drawn
    console.assert_clean()


def test_the_series_answer_counts_the_non_finite_values_a_resume_keeps(degenerate):
    server = degenerate["server"]
    answer = server.client.get(f"/api/runs/{degenerate['runs']['extreme']}/series",
                               params={"names": ["nan_loss", "diverging", "c_max"]}).json()["series"]
    assert answer["c_max"]["nonfinite"] is None
    nan_loss, diverging = answer["nan_loss"]["nonfinite"], answer["diverging"]["nonfinite"]
    assert (nan_loss["count"], nan_loss["first_step"], nan_loss["last_step"]) == (STEPS, 0, STEPS - 1)
    assert (diverging["count"], diverging["first_step"]) == (STEPS - DIVERGES_AT, DIVERGES_AT)
    assert diverging["first_time"] < diverging["last_time"]
    zoomed = server.client.get(f"/api/runs/{degenerate['runs']['extreme']}/series",
                               params={"names": "diverging", "start": 40, "end": 44}).json()["series"]["diverging"]
    assert (zoomed["nonfinite"]["count"], zoomed["nonfinite"]["first_step"]) == (5, 40)


def test_live_nan_values_mark_the_chart_as_they_arrive(degenerate, page, console):
    server = degenerate["server"]
    r = server.client.post("/api/runs/attach", json={"config": {"name": "goes nan live", "train": {"steps": 100}},
                                                     "run_dir": "/elsewhere/live-nan", "host": "laptop", "live": True})
    assert r.status_code == 201, r.text
    run_id, auth = r.json()["run"]["id"], {"Authorization": f"Bearer {r.json()['token']}"}

    def post(first_seq: int, steps: range, loss: Any) -> None:
        events = [{"seq": first_seq + i, "time": time.time(), "kind": "metric", "step": s,
                   "values": {"loss": loss(s), "grad_norm": None}} for i, s in enumerate(steps)]
        r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events}, headers=auth)
        assert r.status_code == 200, r.text

    started = {"seq": 0, "time": time.time(), "kind": "status", "status": "running", "step": 0}
    assert server.client.post(f"/api/runs/{run_id}/events", json={"events": [started]}, headers=auth).status_code == 200
    post(1, range(10), lambda s: 1.0 / (s + 1))
    page.goto(f"{degenerate['base']}/#/runs/{run_id}")
    page.locator(".chart-card[data-chart='loss'] .chart-status", has_text="10 pts").wait_for()
    post(11, range(10, 15), lambda s: None)  # diverged: the trainer sends null for NaN
    status = page.locator(".chart-card[data-chart='loss'] .chart-status", has_text="5 NaN/inf")
    status.wait_for()
    assert "10 pts" in status.text_content()
    page.wait_for_function("""() => document.querySelector('.chart-card[data-chart="loss"] .plot')
        .layout.shapes.some((s) => s.type === 'line' && s.x0 === 10)""")
    # A metric null from its first value still gets a chart, which says why it has no line.
    grad = page.locator(".chart-card[data-chart='grad_norm']")
    grad.locator(".annotation-text", has_text="no finite values").wait_for()
    assert "15 NaN/inf values (steps 0–14)" in grad.locator(".annotation-text").all_text_contents()[-1]
    console.assert_clean()
