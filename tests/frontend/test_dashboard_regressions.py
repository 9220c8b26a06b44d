"""What a W&B user trips over in the dashboard: the new-run status line, the runs table's header and tags,
long names and tags on the compare and run pages, chart hovers, attached runs' "Where".

Runs are registered through the public attach API (`POST /api/runs/attach`, then their events), so nothing
trains. Run: python -m pytest -q tests/frontend/test_dashboard_regressions.py
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.backend_fixtures import (  # noqa: F401 - fixtures
    AppServer,
    app_server,
    app_server_factory,
    demo_dataset,
    served_app,
)
from tests.browser_fixtures import browser, console, page, sideways_scroll, watched_page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LONG_NAME = "a-very-long-run-name-" + "x" * 150 + "-end"
LONG_TAG = "tag-" + "y" * 60  # the longest a tag may be (64), with no place to break
PHONE = {"width": 375, "height": 740}


def attach(server: AppServer, name: str, tags: list[str], lr: float, steps: int = 30) -> str:
    """A finished run uploaded as `cliplab sync` would: registered, then its events (metrics, two evals)."""
    config = {"name": name, "tags": tags, "optim": {"lr": lr}, "train": {"steps": steps}}
    r = server.client.post("/api/runs/attach", json={"config": config, "run_dir": f"/elsewhere/{name[:30]}-{lr}",
                                                      "host": "laptop-7", "live": False})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["token"]
    t0, events, seq = time.time() - 600, [], 0

    def add(kind: str, step: int, **body: Any) -> None:
        nonlocal seq
        seq += 1
        events.append({"seq": seq, "time": t0 + 3 * step, "kind": kind, "step": step, "total_steps": steps, **body})

    add("status", 0, status="running")
    for step in range(1, steps + 1):
        add("metric", step, values={"loss": 4 * math.exp(-step / 10) + 0.5 + 0.05 * math.sin(step), "lr": lr})
        if step % 10 == 0:
            add("eval", step, values={"val/loss": 3 * math.exp(-step / 15) + 0.6123456789})
    add("status", steps, status="finished", reason=None)
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return run_id


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory, demo_dataset: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """A served app (demo dataset, nothing launched) with three uploaded runs, one with a very long name and tag."""
    with served_app(tmp_path_factory.mktemp("qa-dashboard"), demo_dataset) as server:
        runs = {"low": attach(server, "lr-low", ["sweep"], 1e-4), "mid": attach(server, "lr-mid", ["sweep"], 1e-3),
                "long": attach(server, LONG_NAME, [LONG_TAG, "t2", "t3"], 1e-2)}
        yield {"server": server, "base": server.base_url, "runs": runs}



def test_processes_and_gpus_fields_update_the_status_line_with_the_servers_check(qa, page, console):
    """Typing more processes than the machine has cores showed the field error only after Start: the status
    line beside Start kept saying "Config is valid." because these two fields never asked the server."""
    page.goto(f"{qa['base']}/#/new")
    status = page.locator(".validation-status")
    page.wait_for_function("() => document.querySelector('.validation-status')?.textContent === 'Config is valid.'")
    too_many = (os.cpu_count() or 1) + 1
    if too_many > 64:
        pytest.skip("this machine has as many cores as a CPU run may ask for")
    page.fill("#field-nproc", str(too_many))
    page.wait_for_function("() => /problem/.test(document.querySelector('.validation-status').textContent)",
                           timeout=10_000)
    assert "CPU cores" in page.inner_text("#field-nproc-error")
    assert status.get_attribute("class").split()[-1] == "bad"
    page.fill("#field-nproc", "1")
    page.wait_for_function("() => document.querySelector('.validation-status').textContent === 'Config is valid.'",
                           timeout=10_000)
    assert page.inner_text("#field-nproc-error") == ""
    console.assert_clean()


def test_runs_table_sorts_from_anywhere_in_a_header_cell_and_cuts_a_long_tag(qa, page, console):
    page.goto(f"{qa['base']}/#/runs")
    page.locator(".runs-table tbody tr").nth(2).wait_for()
    # Click the header cell well right of its short label "Name": the whole cell sorts, as in W&B's table.
    th = page.locator("th.col-name")
    box = th.bounding_box()
    text_right = page.evaluate("""() => { const r = document.createRange();
        r.selectNodeContents(document.querySelector('th.col-name button.sort').firstChild);
        return r.getBoundingClientRect().right; }""")
    x = box["width"] - 6
    assert box["x"] + x > text_right + 20, "the click lands well right of the label's text"
    th.click(position={"x": x, "y": box["height"] - 5})
    page.wait_for_function("() => document.querySelector('th.col-name').getAttribute('aria-sort') === 'ascending'")
    names = page.locator(".runs-table tbody td.col-name a").all_inner_texts()
    assert names == sorted(names, key=str.lower)
    # A 64-character tag with no break point stays inside the table (cut, whole in its tooltip).
    tag = page.locator(".runs-table td.col-tags .tag", has_text="tag-yyy")
    sticks_out = tag.evaluate("(t) => t.getBoundingClientRect().right - t.closest('td').getBoundingClientRect().right")
    assert sticks_out <= 0, f"the tag sticks {sticks_out}px out of its cell"
    assert LONG_TAG in tag.get_attribute("title")
    assert sideways_scroll(page) <= 0
    console.assert_clean()


def test_compare_page_fits_the_window_when_a_run_to_add_has_a_long_name(qa, page, console):
    """The "Add a run" list grew as wide as its longest option and pushed the page sideways on a desktop."""
    runs = qa["runs"]
    page.goto(f"{qa['base']}/#/compare?ids={runs['low']},{runs['mid']}")
    page.wait_for_function("() => document.querySelector('[data-chart=\"loss\"] .plot')?.data")
    assert page.locator("#add-run option", has_text="a-very-long-run-name").count() == 1
    assert sideways_scroll(page) <= 0
    select, card = page.locator("#add-run").bounding_box(), page.locator(".compare-picker").bounding_box()
    assert select["x"] + select["width"] <= card["x"] + card["width"] + 1
    assert page.locator(".compare-picker label").bounding_box()["height"] < 30, "the label stays on one line"
    console.assert_clean()


def test_run_page_of_an_attached_run_with_a_long_tag_fits_a_phone_and_says_where_it_ran(qa, browser, console):
    with watched_page(browser, console, PHONE) as page:
        page.goto(f"{qa['base']}/#/runs/{qa['runs']['long']}")
        page.locator(".run-meta").wait_for()
        assert sideways_scroll(page) <= 0, "a long tag in the run title widened the page"
        meta = dict(zip(page.locator(".run-meta dt").all_inner_texts(), page.locator(".run-meta dd").all_inner_texts()))
        assert meta["Host"] == "laptop-7"
        assert meta["Where"] != "This machine", "an attached run trained on its own host, not the server's machine"
        assert "attached" in meta["Where"].lower()
    console.assert_clean()


def test_eval_points_hover_in_the_same_form_as_training_lines(qa, page, console):
    """The hover said `val/loss : 0.612346` (Plotly's default) beside `loss: 0.5123` (five significant digits)."""
    page.goto(f"{qa['base']}/#/runs/{qa['runs']['mid']}")
    page.wait_for_function("() => document.querySelector('[data-chart=\"loss\"] .plot')?.data")
    templates = page.evaluate("""() => document.querySelector('[data-chart="loss"] .plot').data
        .filter((t) => t.visible === true).map((t) => [t.name, t.hovertemplate || null])""")
    assert dict(templates).get("val/loss") == "%{meta}: %{y:.5g}<extra></extra>", templates
    box = page.locator('[data-chart="loss"] .nsewdrag').bounding_box()
    for frac in (0.3, 0.62, 0.95):  # step 10, 20 or 30 lies under one of these
        page.mouse.move(box["x"] + box["width"] * frac, box["y"] + box["height"] * 0.5)
        page.wait_for_timeout(200)
        lines = page.evaluate("""() => [...document.querySelectorAll('[data-chart="loss"] .hoverlayer .legend text')]
            .map((t) => t.textContent)""")
        val = [line for line in lines if line.startswith("val/loss")]
        if val:
            break
    assert val and val[0].startswith("val/loss: ") and len(val[0].split(": ")[1].replace(".", "")) <= 6, lines
    console.assert_clean()


def test_filters_find_runs_older_than_the_latest_500_the_table_holds(app_server, page, console):
    """With more runs than the table loads (500), the Name and Tag boxes searched only the loaded ones: an older
    run the API finds (`?q=`) showed as "No runs match these filters"."""
    client = app_server.client

    def register(name: str, tags: list[str]) -> None:
        r = client.post("/api/runs/attach", json={"config": {"name": name, "tags": tags}, "run_dir": f"/elsewhere/{name}",
                                                  "live": False})
        assert r.status_code == 201, r.text

    register("needle-old", ["rare-tag"])
    for i in range(505):
        register(f"filler-{i:03d}", ["common"])
    page.goto(f"{app_server.base_url}/#/runs")
    page.locator(".runs-table tbody tr").nth(2).wait_for()
    assert "latest 500 of 506" in page.inner_text(".filters > .muted")
    assert page.locator(".runs-table td.col-name a", has_text="needle-old").count() == 0
    page.fill("#filter-name", "needle")
    page.locator(".runs-table td.col-name a", has_text="needle-old").wait_for(timeout=10_000)
    assert page.locator(".runs-table tbody tr").count() == 1
    page.fill("#filter-name", "")
    page.fill("#filter-tag", "rare")
    page.locator(".runs-table td.col-name a", has_text="needle-old").wait_for(timeout=10_000)
    assert page.locator(".runs-table tbody tr").count() == 1
    console.assert_clean()


def test_eta_of_a_resumed_run_counts_its_training_time_not_the_hours_it_was_stopped(qa, page, console):
    """Before the live rate is known the ETA came from step / (now - first start): a run stopped for an hour and
    resumed showed an ETA several times too long until the next progress events arrived."""
    page.goto(f"{qa['base']}/#/runs")
    page.locator(".runs-table tbody tr").first.wait_for()
    eta = page.evaluate("""async () => {
        const {progressCell} = await import('/progress.js');
        const now = Date.now() / 1000;
        // 100 s of training for 100 steps, then stopped for an hour, resumed 100 s ago at step 100: step 200 of 300.
        const run = {status: 'running', step: 200, total_steps: 300, started_at: now - 3800,
            attempts: [{started_at: now - 3800, ended_at: now - 3700}, {started_at: now - 100, ended_at: null}]};
        return progressCell(run, null).textContent; }""")
    assert "200 / 300" in eta and "ETA 1m 40s" in eta, eta
    console.assert_clean()
