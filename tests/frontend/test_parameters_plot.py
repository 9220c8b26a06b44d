"""The compare page's "Settings and results" card: a parallel-coordinates plot of the settings the compared runs
differ in against a metric's best value, drawn by real Plotly in Debian's chromium from runs uploaded through
the real API."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.backend_fixtures import served_app
from tests.browser_fixtures import browser, console, page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# (name, lr, batch size, optimizer's betas as a list, best val/loss, has an eval at all)
RUNS = [("lr-1e-5", 1e-5, 8, [0.9, 0.98], 2.5, True), ("lr-1e-4", 1e-4, 16, [0.9, 0.98], 1.25, True),
        ("lr-1e-3", 1e-3, 8, [0.9, 0.999], 0.75, True), ("no-eval", 3e-4, 16, [0.9, 0.98], None, False)]


def upload(server: Any, name: str, lr: float, batch: int, betas: list[float], best: float | None) -> str:
    config = {"name": name, "optim": {"lr": lr, "betas": betas}, "train": {"steps": 20, "batch_size": batch}}
    r = server.client.post("/api/runs/attach", json={"config": config, "run_dir": f"/elsewhere/{name}", "live": False})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["token"]
    t0 = time.time() - 100
    events = [{"seq": 1, "time": t0, "kind": "status", "step": 0, "status": "running"},
              {"seq": 2, "time": t0 + 1, "kind": "metric", "step": 10, "values": {"loss": 3.0}}]
    if best is not None:
        events += [{"seq": 3, "time": t0 + 2, "kind": "eval", "step": 10, "values": {"val/loss": best + 1.0}},
                   {"seq": 4, "time": t0 + 3, "kind": "eval", "step": 20, "values": {"val/loss": best}}]
    events.append({"seq": len(events) + 1, "time": t0 + 4, "kind": "status", "step": 20, "status": "finished"})
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return run_id


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, demo_dataset: Path) -> Iterator[dict[str, Any]]:
    with served_app(tmp_path_factory.mktemp("params-plot"), demo_dataset) as server:
        ids = [upload(server, name, lr, bs, betas, best) for name, lr, bs, betas, best, _ in RUNS]
        yield {"base": server.base_url, "ids": ids, "server": server}


def plot_data(page: Any) -> dict[str, Any]:
    """What Plotly drew: the run lines (name, y positions, hover texts, colour), the axis names and tick labels,
    the colour bar's scale, and how many line paths the SVG holds."""
    return page.evaluate("""() => {
      const el = document.querySelector('#compare-params .params-plot');
      const lines = el.data.filter(t => t.mode === 'lines+markers');
      const bar = el.data.find(t => t.marker?.showscale);
      return {lines: lines.map(t => ({name: t.name, y: t.y, text: t.text, color: t.line.color})),
              axes: el.layout.xaxis.ticktext, ticks: el.layout.annotations.map(a => [a.x, a.text]),
              reverse: bar?.marker.reversescale, cmin: bar?.marker.cmin, cmax: bar?.marker.cmax,
              paths: el.querySelectorAll('.scatterlayer .trace .js-line').length};
    }""")


def test_each_run_is_a_line_through_its_settings_and_best_metric(sweep, page, console):
    page.goto(f"{sweep['base']}/#/compare?ids={','.join(sweep['ids'])}")
    page.wait_for_function("() => document.querySelector('#compare-params .params-plot')?.data?.length > 0")
    drawn = plot_data(page)
    # lr spans 100x: a log axis; the batch size a plain one; betas (lists) categories; then the metric.
    assert drawn["axes"] == ["optim.lr (log)", "optim.betas", "train.batch_size", "val/loss (best)"]
    assert drawn["paths"] == 3  # drawn as SVG: one line per run with a val/loss, whatever WebGL the browser has
    lines = {line["name"]: line for line in drawn["lines"]}
    assert sorted(lines) == ["lr-1e-3", "lr-1e-4", "lr-1e-5"]
    # Positions on each axis, 0 (bottom) to 1 (top): log lr evenly spaced; the best (lowest) val/loss per run.
    assert lines["lr-1e-5"]["y"] == pytest.approx([0.0, 0.0, 0.0, 1.0])
    assert lines["lr-1e-4"]["y"] == pytest.approx([0.5, 0.0, 1.0, (1.25 - 0.75) / (2.5 - 0.75)])
    assert lines["lr-1e-3"]["y"] == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert "optim.lr (log): 1.00e-4" in lines["lr-1e-4"]["text"]
    assert "optim.betas: [0.9,0.999]" in lines["lr-1e-3"]["text"]
    assert "val/loss (best): 1.25" in lines["lr-1e-4"]["text"]
    # Lower is better: the lowest val/loss is brightest (viridis' yellow end), the highest darkest.
    assert lines["lr-1e-3"]["color"] == "rgb(253,231,37)" and lines["lr-1e-5"]["color"] == "rgb(68,1,84)"
    assert drawn["reverse"] is True and (drawn["cmin"], drawn["cmax"]) == (0.75, 2.5)
    tick_texts = {text for _, text in drawn["ticks"]}
    assert {"1.00e-5", "1.00e-4", "0.001", "[0.9,0.98]", "[0.9,0.999]", "8", "16"} <= tick_texts
    note = page.locator("#compare-params .params-note").inner_text()
    assert "3 settings the runs differ in" in note and "lower is better" in note
    assert "1 run without a val/loss value left out" in note

    # Hovering a point names its run.
    point = page.locator("#compare-params .params-plot .scatterlayer .trace .points path").first
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.locator("#compare-params .hoverlayer .hovertext").wait_for()
    assert page.locator("#compare-params .hoverlayer .hovertext").text_content().startswith("lr-1e-")
    screenshot(page, "compare-parameters", "#compare-params")
    console.assert_clean()


def test_identical_settings_say_so_instead_of_an_empty_plot(sweep, page, console):
    first = sweep["ids"][1]
    page.goto(f"{sweep['base']}/#/compare?ids={first}")
    note = page.locator("#compare-params .params-note")
    note.wait_for()
    page.wait_for_function("() => document.querySelector('#compare-params .params-note').textContent.length > 0")
    assert "same settings" in note.inner_text()
    assert page.locator("#compare-params .params-plot").is_hidden()
    console.assert_clean()


def test_runs_without_evaluations_are_plotted_by_their_settings_and_the_note_says_why_no_metric(sweep, page, console):
    ids = [upload(sweep["server"], f"fresh-{lr}", lr, 8, [0.9, 0.98], None) for lr in (1e-4, 1e-3)]
    page.goto(f"{sweep['base']}/#/compare?ids={','.join(ids)}")
    page.wait_for_function("() => document.querySelector('#compare-params .params-note')?.textContent.length > 0")
    note = page.locator("#compare-params .params-note").inner_text()
    assert "1 setting the runs differ in" in note and "no run has evaluated yet" in note, note
    page.wait_for_function("() => document.querySelector('#compare-params .params-plot')?.data")
    assert plot_data(page)["axes"] == ["optim.lr"]
    console.assert_clean()
