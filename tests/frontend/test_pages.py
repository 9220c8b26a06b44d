"""The dashboard in Debian's chromium against a real `cliplab serve` (uvicorn, SQLite, trainer subprocesses).

Screenshots of every page land in test-artifacts/. Each test asserts that the page logged no console
errors. Run: timeout 600 python -m pytest -q -m browser tests/frontend/test_pages.py
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from backend.models import Run

from tests.backend_fixtures import REPO, wait_until
from tests.browser_fixtures import browser, console, page, screenshot, sideways_scroll, wait_run_page_loaded  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# A CPU run small enough for a shared test machine: tiny model, 8-image batches, evaluation (and so a
# similarity matrix) every 2 steps on 16 validation pairs, no loader worker processes.
FAST_YAML_EDITS = {
    ("train", "log_every"): 1,
    ("eval", "max_samples"): 16,
    ("eval", "batch_size"): 8,
    ("eval", "matrix_size"): 6,
    ("eval", "zeroshot"): False,
    ("checkpoint", "every"): 4,
    ("data", "num_workers"): 0,
    ("optim", "warmup_steps"): 3,
}


def trace_points(page: Any, chart: str, name: str) -> int:
    """Points in the visible line of metric `name` in chart `chart` (0 before the chart exists)."""
    return page.evaluate(
        """([chart, name]) => {
            const gd = document.querySelector(`[data-chart="${chart}"] .plot`);
            if (!gd || !gd.data) return 0;
            const t = gd.data.find((t) => t.name === name && t.visible !== false);
            return t ? t.x.length : 0;
        }""",
        [chart, name],
    )


def wait_points(page: Any, chart: str, name: str, more_than: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        n = trace_points(page, chart, name)
        if n > more_than:
            return n
        if time.monotonic() > deadline:
            raise AssertionError(f"chart {chart!r} never showed more than {more_than} points of {name!r} (has {n})")
        page.wait_for_timeout(250)


def confirm(page: Any, button: str) -> None:
    """Accept the open confirmation dialog by its button label."""
    dialog = page.locator("dialog.confirm[open]")
    dialog.wait_for()
    dialog.get_by_role("button", name=button).click()
    dialog.wait_for(state="detached")


def check_narrow(page: Any, name: str) -> None:
    """At 800 px the page must not scroll sideways (wide tables scroll inside their own box); screenshot it."""
    page.set_viewport_size({"width": 800, "height": 900})
    page.wait_for_timeout(300)  # let responsive plots re-lay out
    overflow = sideways_scroll(page)
    screenshot(page, f"{name}-800px")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert overflow <= 0, f"{name} is {overflow}px wider than an 800 px window"


def run_id_from_url(page: Any) -> str:
    page.wait_for_url(re.compile(r".*#/runs/r-[^/?]+$"), timeout=30_000)
    return page.url.rsplit("/", 1)[-1]


# ---- pure helpers, run in the page ----------------------------------------------------------------


def test_chart_and_form_helpers_compute_smoothing_grouping_diffs_and_matrix_stats(live_server, page, console):
    page.goto(live_server.base_url + "/#/runs")
    page.wait_for_selector("h1")
    result = page.evaluate("""async () => {
        const charts = await import('/charts.js');
        const compare = await import('/compare.js');
        const matrix = await import('/matrix.js');
        const form = await import('/new_run.js');
        return {
            ema: charts.ema([1, 2, null, 4], 0.5).values,
            plan: charts.planCharts(
                ['val/t2i_R@5', 'lr', 'loss', 'val/i2t_R@10', 'val/i2t_R@1', 'val/loss', 'mystery']),
            diff: compare.configDiff([{optim: {lr: 1e-3, eps: 1e-6}, tags: ['a']},
                                      {optim: {lr: 2e-3, eps: 1e-6}, tags: ['a']}]),
            stats: matrix.matrixStats([[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.7, 0.2, 0.4]], ['a', 'b', 'c']),
            dupStats: matrix.matrixStats([[0.1, 0.9], [0.2, 0.3]], ['same', 'same']),
            ints: [form.parseFieldValue({type: 'int'}, '12'), form.parseFieldValue({type: 'int'}, '1.5')],
            floats: [form.parseFieldValue({type: 'float'}, '1e-4'), form.parseFieldValue({type: 'float'}, 'abc')],
            tags: form.parseFieldValue({type: 'tags'}, ' a, b ,,c '),
            nullable: form.parseFieldValue({type: 'text', nullable: true}, '  '),
        };
    }""")
    # Debiased EMA (TensorBoard): recompute independently here; nulls stay gaps and do not advance it.
    expected, acc, n = [], 0.0, 0
    for v in [1, 2, None, 4]:
        if v is None:
            expected.append(None)
            continue
        acc, n = acc * 0.5 + 0.5 * v, n + 1
        expected.append(acc / (1 - 0.5 ** n))
    assert [e is None for e in expected] == [r is None for r in result["ema"]]
    assert [r for r in result["ema"] if r is not None] == pytest.approx([e for e in expected if e is not None])
    assert result["ema"][0] == 1  # debiasing: the first smoothed value is the first value

    charts = {c["key"]: c["names"] for c in result["plan"]}
    assert charts["loss"] == ["loss", "val/loss"]
    assert charts["retrieval"] == ["val/i2t_R@1", "val/i2t_R@10", "val/t2i_R@5"]  # by direction, then K
    assert charts["metric:mystery"] == ["mystery"]  # unknown metrics still get a chart

    diff = {row["key"]: row for row in result["diff"]}
    assert diff["optim.lr"]["differs"] and not diff["optim.eps"]["differs"] and not diff["tags"]["differs"]

    sim = [[0.9, 0.1, 0.2], [0.3, 0.8, 0.1], [0.7, 0.2, 0.4]]
    k = len(sim)
    diag = sum(sim[i][i] for i in range(k)) / k
    off = sum(sim[i][j] for i in range(k) for j in range(k) if i != j) / (k * (k - 1))
    hits = sum(max(range(k), key=lambda j: sim[i][j]) == i for i in range(k))
    assert result["stats"]["diag"] == pytest.approx(diag)
    assert result["stats"]["off"] == pytest.approx(off)
    assert result["stats"]["hits"] == hits == 2
    assert result["dupStats"]["hits"] == 2  # identical captions count as each other's match

    assert result["ints"] == [12, "1.5"]  # unparseable text goes to the API, which names the field
    assert result["floats"] == [1e-4, "abc"]
    assert result["tags"] == ["a", "b", "c"]
    assert result["nullable"] is None
    console.assert_clean()


# ---- the whole story: form -> live charts -> matrix -> clone -> stop -> compare --------------------


def test_demo_run_from_form_streams_live_then_clone_stop_and_compare(live_server_factory, page, console):
    server = live_server_factory(max_cpu_runs=1)
    page.goto(server.base_url + "/#/new")

    # The form starts from the CPU demo config; the API's resolved config fills every field.
    name = page.locator("#field-name")
    page.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''", timeout=60_000)
    assert name.evaluate("el => el === document.activeElement"), "the first field should have focus"
    name.fill("browser-demo")
    page.fill("#field-train-batch-size", "8")
    page.fill("#field-train-steps", "300")
    page.fill("#field-eval-every", "2")

    # A bad value gets the API's message next to its field, and the form says it cannot start.
    page.fill("#field-optim-lr", "-1")
    lr_error = page.locator("#field-optim-lr-error")
    lr_error.wait_for(state="visible")
    assert "greater than 0" in lr_error.inner_text()
    assert page.locator("#field-optim-lr").get_attribute("aria-invalid") == "true"
    page.fill("#field-optim-lr", "0.002")
    page.wait_for_function("() => document.querySelector('#field-optim-lr-error').textContent === ''")

    # The YAML editor mirrors the form, and edits made there flow back into the form.
    page.click("details.advanced summary")
    yaml_area = page.locator("#config-yaml")
    page.wait_for_function("() => document.querySelector('#config-yaml').value.includes('lr: 0.002')")
    config = yaml.safe_load(yaml_area.input_value())
    assert config["train"]["batch_size"] == 8 and config["name"] == "browser-demo"
    for (section, key), value in FAST_YAML_EDITS.items():
        config[section][key] = value
    yaml_area.fill(yaml.safe_dump(config, sort_keys=False))
    page.wait_for_function("() => document.querySelector('#field-optim-warmup-steps').value === '3'")
    screenshot(page, "new-run-form")
    check_narrow(page, "new-run-form")

    # Enter in a field submits the form.
    page.locator("#field-train-steps").press("Enter")
    run_a = run_id_from_url(page)
    stored = server.run(run_a)["config"]
    assert stored["optim"]["lr"] == 0.002 and stored["eval"]["matrix_size"] == 6 and stored["train"]["steps"] == 300

    # Live: the loss chart gains points from the SSE stream while the document stays the same one.
    page.evaluate("window.__sameDocument = true")
    page.locator(".run-title .status", has_text="running").wait_for(timeout=120_000)
    first = wait_points(page, "loss", "loss", 0, timeout_s=120)
    wait_points(page, "loss", "loss", first, timeout_s=90)
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded instead of streaming"
    steps = page.evaluate("""() => document.querySelector('[data-chart="loss"] .plot').data
        .find((t) => t.name === 'loss').x""")
    assert steps == sorted(set(steps)), f"live points must arrive once each, in step order: {steps}"

    # The similarity matrix: a K x K heatmap with one thumbnail per row, then a second eval step.
    page.wait_for_function(
        "() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'", timeout=90_000)
    k = page.evaluate("document.querySelector('.matrix-plot').data[0].z.length")
    assert k == 6
    assert page.evaluate("document.querySelector('.matrix-plot').layout.images.length") == k
    assert page.evaluate("document.querySelector('.matrix-plot').data[0].z.every((row) => row.length === 6)")
    page.wait_for_function("() => Number(document.querySelector('#matrix-step').max) >= 1", timeout=90_000)
    label = page.locator("output[for=matrix-step]")
    latest_label = label.inner_text()
    page.focus("#matrix-step")
    page.keyboard.press("ArrowLeft")  # the slider is keyboard-operable
    page.wait_for_function(
        f"() => document.querySelector('output[for=matrix-step]').textContent !== {json.dumps(latest_label)}")
    assert label.inner_text().startswith("step ")
    screenshot(page, "run-page-live")
    screenshot(page, "similarity-matrix", "#matrix")
    check_narrow(page, "run-page-live")

    # Clone opens the form filled from run A (it changes nothing: no confirmation); run B waits while A holds the CPU slot.
    page.click("#clone-run")
    page.wait_for_url(re.compile(r".*#/new\?clone="))
    page.wait_for_function("() => document.querySelector('#field-name')?.value === 'browser-demo-clone'")
    assert page.input_value("#field-train-batch-size") == "8"
    assert page.input_value("#field-optim-lr") == "0.002"
    page.fill("#field-optim-lr", "0.001")
    page.locator("#field-optim-lr").press("Enter")
    run_b = run_id_from_url(page)
    assert run_b != run_a
    page.locator(".info-box", has_text="Queued").wait_for()
    screenshot(page, "run-page-queued")

    # Stop run A after confirming; the trainer checkpoints and exits, then B starts.
    page.goto(f"{server.base_url}/#/runs/{run_a}")
    page.click("#stop-run")
    confirm(page, "Stop run")
    page.locator(".run-title .status", has_text="stopped").wait_for(timeout=90_000)
    page.locator("#resume-run").wait_for()  # a stopped run offers Resume
    assert server.run(run_a)["status"] == "stopped"
    link = page.locator("#checkpoints a[download]").first
    link.wait_for()
    with server.client.stream("GET", link.get_attribute("href")) as download:  # the first bytes will do
        assert download.status_code == 200 and download.headers["content-type"] == "application/x-tar"
        assert next(download.iter_bytes())
    wait_until(lambda: server.get(f"/api/runs/{run_b}/series?names=loss&buckets=10").json()["series"]["loss"]["step"],
               120, 0.5, f"run {run_b} to log its first loss")

    # The runs list shows both; tick them and compare.
    page.goto(f"{server.base_url}/#/runs")
    for rid in (run_a, run_b):
        page.locator(f'tr[data-run-id="{rid}"] input.select-run').check()
    screenshot(page, "runs-list")
    check_narrow(page, "runs-list")
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r".*#/compare\?ids="))
    page.wait_for_function("""() => {
        const gd = document.querySelector('[data-chart="loss"] .plot');
        if (!gd || !gd.data) return false;
        const lines = gd.data.filter((t) => t.visible !== false && / · loss$/.test(t.name || ''));
        return lines.length === 2 && lines.every((t) => t.x.length > 0);
    }""", timeout=30_000)
    # Run B is still training: its line grows from its stream while the page stays put.
    b_points = f"""() => {{
        const gd = document.querySelector('[data-chart="loss"] .plot');
        const t = gd.data.find((t) => t.visible !== false && t.name === 'browser-demo-clone · loss');
        return t ? t.x.length : -1;
    }}"""
    loaded = page.evaluate(b_points)
    assert loaded > 0, "run B's loss line is missing from the compare chart"
    page.wait_for_function(f"() => ({b_points})() > {loaded}", timeout=60_000)
    # Two runs' legends (up to 12 entries for recall@K) must not squash any plot into a strip.
    plot_heights = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('[data-chart]')]
        .map((c) => [c.dataset.chart, c.querySelector('.plot')?._fullLayout?._size?.h]))""")

    assert all(h and h >= 120 for h in plot_heights.values()), sorted(plot_heights.items())
    differing = page.locator("#config-diff tr.differs th").all_inner_texts()
    assert "optim.lr" in differing and "name" in differing
    assert "train.batch_size" not in differing
    screenshot(page, "compare")
    check_narrow(page, "compare")

    # Resume run A after confirming: it queues again behind B for the one CPU slot.
    page.goto(f"{server.base_url}/#/runs/{run_a}")
    page.click("#resume-run")
    confirm(page, "Resume")
    page.locator(".info-box", has_text="Queued").wait_for()
    assert server.run(run_a)["status"] == "queued"

    for rid in (run_a, run_b):
        server.post(f"/api/runs/{rid}/stop")
    console.assert_clean()


# ---- states: failed, disconnected, API errors -----------------------------------------------------------


def test_failed_run_shows_reason_and_last_log_lines(live_server_factory, page, console, tmp_path):
    server = live_server_factory(max_cpu_runs=1, readable_dirs=json.dumps([str(tmp_path)]))
    # The CSV is there (the API checks that), but none of its images is: the trainer fails at start-up.
    unreadable = tmp_path / "train.csv"
    unreadable.write_text("filepath,caption\n" + "".join(f"gone{i}.jpg,a cat\n" for i in range(8)))
    body = {"name": "doomed", "config": {"data": {"train": str(unreadable), "val": None, "num_workers": 0},
                                         "train": {"steps": 5, "batch_size": 4}}}
    r = server.post("/api/runs", json=body)
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    server.wait_status(run_id, ("failed",), timeout=120)

    page.goto(f"{server.base_url}/#/runs/{run_id}")
    box = page.locator(".state-box .error-box")
    box.wait_for()
    reason = server.run(run_id)["reason"]
    assert reason and reason in box.inner_text()
    page.wait_for_function("() => !document.querySelector('.logs-short').textContent.startsWith('Loading')")
    assert page.locator(".logs-short").inner_text().strip(), "the failed state should show the last log lines"
    # It failed before saving a checkpoint: Resume would only end in a 409, so it is offered disabled, saying why.
    assert server.run(run_id)["can_resume"] is False
    assert page.locator("#resume-run").is_disabled()
    assert "No checkpoint" in page.locator(".run-actions .disabled-action").get_attribute("title")
    screenshot(page, "run-page-failed")
    page.goto(f"{server.base_url}/#/runs")
    page.locator(f'tr[data-run-id="{run_id}"] .row-reason').wait_for()  # the list says why, too
    page.goto(f"{server.base_url}/#/runs/{run_id}")

    # Delete it after confirming: back to the list, where it is gone.
    page.click("#delete-run")
    confirm(page, "Delete")
    page.wait_for_url(re.compile(r".*#/runs$"))
    assert server.get(f"/api/runs/{run_id}").status_code == 404
    page.locator(".empty-state", has_text="No runs yet").wait_for()

    page.goto(f"{server.base_url}/#/runs/r-does-not-exist")
    page.locator(".error-box", has_text="no run with id").wait_for()
    # That 404 is the page's own request for a missing run: the one console error we expect.
    console.allow("404 (Not Found)")
    console.assert_clean()


def test_stream_drop_shows_banner_and_reconnects_by_itself(live_server, page, console):
    r = live_server.post("/api/runs", json={"name": "waiting", "config": {}})
    run_id = r.json()["id"]
    page.goto(f"{live_server.base_url}/#/runs")
    page.locator(f'tr[data-run-id="{run_id}"]').wait_for()
    banner = page.locator("#banner")
    assert banner.is_hidden()

    live_server.kill()  # drops the SSE connection; EventSource starts reconnecting
    banner.locator(".banner-msg", has_text="reconnecting").wait_for(timeout=20_000)
    screenshot(page, "runs-list-disconnected")
    live_server.start()
    banner.wait_for(state="hidden", timeout=30_000)

    # The reconnected stream delivers again: a new run appears without a reload.
    r = live_server.post("/api/runs", json={"name": "after-reconnect", "config": {}, "tags": ["late"]})
    page.locator(f'tr[data-run-id="{r.json()["id"]}"]').wait_for(timeout=15_000)

    # Sort by name (a header button), then filter by name and by tag.
    names = lambda: page.locator("tbody .col-name a").all_inner_texts()  # noqa: E731
    assert names() == ["after-reconnect", "waiting"]  # newest first by default
    page.get_by_role("button", name="Name").click()
    assert page.locator("th.col-name").get_attribute("aria-sort") == "ascending"
    page.get_by_role("button", name="Name").click()
    page.wait_for_function("() => document.querySelector('tbody .col-name a').textContent === 'waiting'")
    page.fill("#filter-name", "WAIT")
    page.wait_for_function("() => document.querySelectorAll('tbody tr').length === 1")
    assert names() == ["waiting"]
    page.fill("#filter-name", "")
    page.fill("#filter-tag", "late")
    page.wait_for_function("() => document.querySelectorAll('tbody tr').length === 1")
    assert names() == ["after-reconnect"]
    page.fill("#filter-tag", "nothing-has-this")
    page.get_by_role("button", name="Clear filters").click()
    page.wait_for_function("() => document.querySelectorAll('tbody tr').length === 2")
    # The dropped stream and the reconnection attempts while the server was down are logged by the browser
    # against the stream's URL; nothing else may fail.
    console.allow("/api/stream]")
    console.assert_clean()


def test_new_run_form_reports_yaml_and_api_errors_in_words(live_server, page, console):
    page.goto(live_server.base_url + "/#/new")
    page.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''", timeout=60_000)
    # Keyboard: focus starts on the name and Tab walks the fields in reading order.
    order = ["field-name", "field-model-preset", "field-model-pretrained", "field-data-train", "field-train-batch-size"]
    for expected_id in order:
        assert page.evaluate("document.activeElement.id") == expected_id
        page.keyboard.press("Tab")
    labelled = page.evaluate("""() => [...document.querySelectorAll('form input, form select, form textarea')]
        .filter((el) => !(el.labels && el.labels.length)).map((el) => el.id || el.outerHTML.slice(0, 60))""")
    assert labelled == [], f"form controls without a label: {labelled}"
    page.click("details.advanced summary")
    area = page.locator("#config-yaml")
    text = area.input_value()
    page.wait_for_function("() => document.querySelector('.validation-status').textContent === 'Config is valid.'")
    area.fill(text + "\n  : : bad: [\n")
    page.locator("#yaml-error", has_text="does not parse").wait_for()
    # Unparseable YAML is no config: the status says so (not the last good config's "valid") and Start waits.
    status = page.locator(".validation-status")
    assert "does not parse" in status.inner_text() and "valid" not in status.inner_text()
    assert page.locator("#start-run").is_disabled()
    page.wait_for_timeout(600)  # a validation still in flight must not bring back "Config is valid."
    assert "does not parse" in status.inner_text() and page.locator("#start-run").is_disabled()
    area.fill(text.replace("optim:", "optim:\n  lerning_rate: 3"))
    page.locator(".other-errors li", has_text="optim.lerning_rate").wait_for()
    assert page.locator("#start-run").is_enabled()  # it parses again; the API's complaint blocks the submit
    assert "1 problem" in status.inner_text()
    page.click("#start-run")
    assert "#/new" in page.url  # nothing was submitted
    assert live_server.get("/api/runs").json()["total"] == 0
    page.fill("#field-gpus", "3")
    page.locator("#field-gpus-error", has_text="GPU").wait_for()
    screenshot(page, "new-run-errors")
    console.assert_clean()


def test_action_errors_speak_plainly_and_stay_on_their_page(live_server, page, console):
    run_id = live_server.post("/api/runs", json={"name": "contested", "config": {}}).json()["id"]
    page.goto(f"{live_server.base_url}/#/runs/{run_id}")
    page.click("#stop-run")
    # Someone else stops the run while this page's confirmation is open: the page's Stop then gets a 409.
    page.locator("dialog.confirm[open]").wait_for()
    assert live_server.post(f"/api/runs/{run_id}/stop").status_code == 200
    page.locator(".run-title .status", has_text="stopped").wait_for()
    confirm(page, "Stop run")
    banner = page.locator("#banner .banner-error")
    banner.wait_for()
    text = banner.inner_text()
    assert "Stopping the run failed" in text and "already stopped" in text, text
    for raw in ("POST", "/api/", "409", "failed with"):
        assert raw not in text, f"the banner shows the raw request ({raw!r}): {text}"
    screenshot(page, "run-page-action-error")

    # The error was about that page: the clone form opens without it.
    page.click("#clone-run")
    page.wait_for_url(re.compile(r".*#/new\?clone="))
    page.wait_for_function("() => document.querySelector('#field-name')?.value === 'contested-clone'")
    assert page.locator("#banner").is_hidden()

    # A notice meant for the next page (the open run was deleted) shows there, and only there.
    page.goto(f"{live_server.base_url}/#/runs/{run_id}")
    page.locator(".run-title .status", has_text="stopped").wait_for()
    assert page.locator("#resume-run").is_disabled()  # stopped before it started: no checkpoint to resume from
    wait_run_page_loaded(page)  # else the delete can beat the page's first /matrices request to a 404
    assert live_server.client.delete(f"/api/runs/{run_id}").status_code == 204
    page.wait_for_url(re.compile(r".*#/runs$"))
    page.locator("#banner .banner-msg", has_text="was deleted").wait_for()
    page.click("a[data-nav=new]")
    page.wait_for_url(re.compile(r".*#/new$"))
    page.locator("#banner").wait_for(state="hidden")
    console.allow("409 (Conflict)")  # the browser logs the refused POST itself
    console.assert_clean()


def test_empty_runs_list_starts_the_cpu_demo_in_one_click(live_server, page, console):
    page.goto(f"{live_server.base_url}/#/runs")
    page.locator(".empty-state", has_text="No runs yet").wait_for()
    assert page.locator("#demo-form-link").get_attribute("href") == "#/new"  # the form, for those who want to choose
    page.get_by_role("button", name="Start the CPU demo").click()
    run_id = run_id_from_url(page)
    run = live_server.run(run_id)
    demo = yaml.safe_load((REPO / "contract" / "configs" / "cpu-demo.yaml").read_text())
    assert run["name"] == demo["name"] and run["gpus"] == 0 and run["nproc"] == 1
    assert run["config"]["model"]["preset"] == demo["model"]["preset"]
    assert run["config"]["train"]["steps"] == demo["train"]["steps"]
    page.locator(".info-box", has_text="Queued").wait_for()  # this server starts no runs: it waits

    # In the list: a run that never started has no start time, and short cells keep to one line.
    page.goto(f"{live_server.base_url}/#/runs")
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    row.wait_for()
    assert row.locator("td.col-created").inner_text() == "—"
    assert "Not started" in row.locator("td.col-created").get_attribute("title")
    page.set_viewport_size({"width": 800, "height": 900})
    lines = page.evaluate("""(id) => {
        const row = document.querySelector(`tr[data-run-id="${id}"]`);
        const count = (el) => { const r = document.createRange(); r.selectNodeContents(el);
            return new Set([...r.getClientRects()].map((b) => Math.round(b.top))).size; };
        const badge = document.createElement('span');  // the running badge, the widest: "● running"
        badge.className = 'status status-running';
        badge.textContent = 'running';
        row.querySelector('td.col-status').replaceChildren(badge);
        return {model: count(row.querySelector('td.col-model')), badge: badge.getBoundingClientRect().height};
    }""", run_id)
    screenshot(page, "runs-list-800px-queued")
    assert lines["model"] == 1, "the preset name wrapped"
    assert lines["badge"] < 24, f"the running badge wrapped ({lines['badge']} px tall)"
    console.assert_clean()


# ---- scale: a run with 1,000,000 logged steps ----------------------------------------------------------------

BIG_STEPS = 1_000_000


def insert_big_run(server: Any) -> str:
    """A finished run with 1,000,000 loss points, written through the backend's own database writer."""
    from sqlalchemy import text

    from backend.models import Run

    run_id = server.client.post("/api/runs", json={"name": "million", "config": {}}).json()["id"]
    t0 = time.time() - BIG_STEPS * 0.05

    def job(session: Any) -> None:
        session.execute(text("""
            WITH RECURSIVE s(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM s WHERE x < :n)
            INSERT INTO metric_points (run_id, name, step, seq, time, value)
            SELECT :run_id, 'loss', x, x, :t0 + x * 0.05, 4.0 / (1.0 + x / 50000.0) + (abs(random()) % 1000) / 4000.0
            FROM s"""), {"n": BIG_STEPS, "run_id": run_id, "t0": t0})
        run = session.get(Run, run_id)
        run.status, run.step, run.total_steps, run.metric_names = "finished", BIG_STEPS, BIG_STEPS, ["loss"]
        run.started_at, run.finished_at, run.last_seq = t0, t0 + BIG_STEPS * 0.05, BIG_STEPS

    server.services.writer.call(job)
    return run_id


def test_million_step_run_loads_bucketed_and_zooms_to_full_detail(app_server, page, console):
    run_id = insert_big_run(app_server)
    series_responses: list[Any] = []
    page.on("response", lambda resp: series_responses.append(resp) if "/series?" in resp.url else None)
    started = time.monotonic()
    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    n = wait_points(page, "loss", "loss", 0, timeout_s=30)
    load_s = time.monotonic() - started
    print(f"\n1M-step run: loss chart drawn {load_s:.2f}s after navigation, {n} points")
    assert load_s < 10, f"the chart took {load_s:.1f}s to draw"
    sizes = [len(s["step"]) for resp in series_responses for s in resp.json()["series"].values()]
    assert sizes and n <= 1000 and max(sizes) <= 1000, "the page must ask for buckets, never all points"
    band = page.evaluate("""() => {
        const gd = document.querySelector('[data-chart="loss"] .plot');
        return gd.data.filter((t) => t.fill === 'tonexty' && t.visible !== false).length;
    }""")
    assert band == 1, "downsampled data draws its min..max band"

    # The page keeps answering: a round trip through the event loop is quick.
    t = time.monotonic()
    page.evaluate("new Promise((r) => requestAnimationFrame(() => r(1)))")
    assert time.monotonic() - t < 1.0

    # Zoom to 300 steps: the chart re-requests that range and shows every point in it.
    page.evaluate("""() => Plotly.relayout(document.querySelector('[data-chart="loss"] .plot'),
                                          {'xaxis.range[0]': 500000, 'xaxis.range[1]': 500300})""")
    page.wait_for_function("""() => {
        const gd = document.querySelector('[data-chart="loss"] .plot');
        const t = gd.data.find((t) => t.name === 'loss' && t.visible !== false);
        return t.x.filter((x) => x >= 500000 && x <= 500300).length === 301;
    }""", timeout=15_000)
    assert page.locator('[data-chart="loss"] .chart-status', has_text="zoomed").count() == 1
    screenshot(page, "run-page-million-steps-zoomed")

    # Double-click resets (autorange): back to the bucketed overview.
    loss_plot = "document.querySelector('[data-chart=\"loss\"] .plot')"
    page.evaluate(f"() => Plotly.relayout({loss_plot}, {{'xaxis.autorange': true}})")
    page.wait_for_function(
        "() => !document.querySelector('[data-chart=\"loss\"] .chart-status').textContent.includes('zoomed')")
    assert trace_points(page, "loss", "loss") <= 1000

    # Smoothing from the keyboard: the EMA line appears over the faded raw line.
    page.focus("#smoothing")
    page.keyboard.press("End")
    page.wait_for_function("""() => {
        const gd = document.querySelector('[data-chart="loss"] .plot');
        const lines = gd.data.filter((t) => t.name === 'loss');
        return lines.length === 2 && lines[1].visible === true && lines[1].y.length === lines[0].y.length;
    }""")
    raw, smooth = page.evaluate("""() => document.querySelector('[data-chart="loss"] .plot').data
        .filter((t) => t.name === 'loss').map((t) => t.y)""")
    spread = lambda ys: max(abs(b - a) for a, b in zip(ys, ys[1:]))  # noqa: E731
    assert spread(smooth) < spread(raw), "smoothing should calm the curve"

    # x by time: dates on the axis, and zooming a time window still re-requests a step range.
    page.check("input[name=xmode][value=time]")
    page.wait_for_function("""() => document.querySelector('[data-chart="loss"] .plot').layout.xaxis.type === 'date'""")
    box = page.locator('[data-chart="loss"] .nsewdrag').bounding_box()
    y = box["y"] + box["height"] / 2
    with page.expect_response(lambda r: "/series?" in r.url and "start=" in r.url) as zoom_request:
        page.mouse.move(box["x"] + box["width"] * 0.45, y)  # a user's horizontal drag: zoom into a time window
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.50, y, steps=5)
        page.mouse.move(box["x"] + box["width"] * 0.55, y, steps=5)
        page.mouse.up()
    assert zoom_request.value.ok
    page.locator('[data-chart="loss"] .chart-status', has_text="zoomed").wait_for()
    screenshot(page, "run-page-million-steps-time-axis")

    # Elapsed time since the run's start (what compare overlays want): 1M steps x 0.05 s = 13.9 h.
    page.check("input[name=xmode][value=elapsed]")
    page.wait_for_function("""() => document.querySelector('[data-chart="loss"] .plot').layout.xaxis.title.text
        === 'elapsed (h)'""")
    last_x = page.evaluate("""() => {
        const t = document.querySelector('[data-chart="loss"] .plot').data.find((t) => t.name === 'loss');
        return [t.x[0], t.x[t.x.length - 1]];
    }""")
    # Zero is the run's start: step s was logged s x 0.05 s after it (a bucket's point is its last step's).
    first_x, end_x = last_x
    assert 0 < first_x < 0.01 * BIG_STEPS * 0.05 / 3600 and end_x == pytest.approx(BIG_STEPS * 0.05 / 3600, rel=0.01)
    console.assert_clean()


# ---- the run page's matrix and flat series, from events posted as a trainer would ------------------------


def running_run_with_token(server: Any) -> tuple[str, str]:
    """A queued run turned into what the launcher leaves after spawning a trainer: running, with a token."""
    from backend.models import Run
    from backend.services.ingest import grant_token

    run_id = server.client.post("/api/runs", json={"name": "posted", "config": {}}).json()["id"]

    def job(session: Any) -> str:
        run = session.get(Run, run_id)
        token = grant_token(run)
        run.status, run.started_at = "running", time.time()
        session.add(run)
        return token

    return run_id, server.services.writer.call(job)


def post_events(server: Any, run_id: str, token: str, events: list[dict[str, Any]]) -> None:
    """Post a run's events with its token, as its trainer would; they must all be taken."""
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def thumbnail(i: int) -> str:
    """A 64 px JPEG data URI in a colour of its own, as the trainer's matrix snapshot sends."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), ((i * 53) % 256, (i * 97) % 256, (i * 151) % 256)).save(buf, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def test_matrix_labels_every_column_and_flat_series_get_a_tight_y_range(app_server, page, console):
    run_id, token = running_run_with_token(app_server)
    k = 16
    captions = [f"a small {colour} square" for colour in
                ("red", "green", "blue", "black", "white", "grey", "pink", "brown",
                 "orange", "purple", "yellow", "teal", "navy", "olive", "maroon", "lime")]
    # The first column's caption is the one Plotly dropped: the leftmost label reaches furthest past the grid.
    captions[0] = "a very long caption about a blue circle resting on a wooden table beside a red cube"
    similarity = [[round(0.9 if i == j else 0.1 + 0.01 * ((i + j) % 7), 4) for j in range(k)] for i in range(k)]
    events = [
        {"seq": 1, "time": 1000.0, "kind": "metric", "step": 1, "values": {"loss": 2.0, "acc": 0.25}},
        {"seq": 2, "time": 1001.0, "kind": "metric", "step": 2, "values": {"loss": 1.5, "acc": 0.25}},
        {"seq": 3, "time": 1002.0, "kind": "matrix", "step": 2, "captions": captions, "similarity": similarity,
         "thumbnails": [thumbnail(i) for i in range(k)], "logit_scale": 14.3},
    ]
    post_events(app_server, run_id, token, events)

    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    page.wait_for_function("() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'", timeout=30_000)
    page.wait_for_function(f"() => document.querySelectorAll('.matrix-plot .xtick text').length === {k}")
    labels = page.evaluate("""() => {
        const plot = document.querySelector('.matrix-plot').getBoundingClientRect();
        return [...document.querySelectorAll('.matrix-plot .xtick text')].map((el) => {
            const r = el.getBoundingClientRect();
            return {text: el.textContent.replace(el.querySelector('title')?.textContent || '', ''),
                    title: el.querySelector('title')?.textContent, shown: getComputedStyle(el).display !== 'none',
                    inside: r.width > 0 && r.left >= plot.left - 0.5 && r.bottom <= plot.bottom + 0.5};
        });
    }""")
    assert len(labels) == k
    hidden = [lab["text"] for lab in labels if not (lab["shown"] and lab["inside"])]
    assert not hidden, f"column labels Plotly hid or drew outside the plot: {hidden}"
    assert [lab["title"] for lab in labels] == captions, "each label's tooltip holds its whole caption"
    first = labels[0]["text"]
    assert first.endswith("…") and captions[0].startswith(first[:-1]) and len(first) < len(captions[0])
    assert [lab["text"] for lab in labels[1:]] == captions[1:]  # short captions are shown whole
    page.locator(".matrix-plot .xtick text").first.scroll_into_view_if_needed()
    hovered = page.evaluate("""() => {
        const r = document.querySelector('.matrix-plot .xtick text').getBoundingClientRect();
        const el = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
        return el?.closest('text')?.querySelector('title')?.textContent ?? null;
    }""")
    assert hovered == captions[0], "the pointer over a cut-short label should reach its full-caption tooltip"
    # The heatmap sits in the middle of its card rather than leaving the right half empty.
    gaps = page.evaluate("""() => {
        const body = document.querySelector('#matrix .matrix-body').getBoundingClientRect();
        const plot = document.querySelector('.matrix-plot').getBoundingClientRect();
        return [plot.left - body.left, body.right - plot.right];
    }""")
    assert gaps[0] > 50 and abs(gaps[0] - gaps[1]) <= 2, f"left/right space around the heatmap: {gaps}"
    screenshot(page, "similarity-matrix-long-captions", "#matrix")

    # Two equal accuracy points: a narrow y range around 0.25, not Plotly's -0.5..1 for a flat line.
    wait_points(page, "acc", "acc", 1, timeout_s=15)
    y_range = page.evaluate("document.querySelector('[data-chart=\"acc\"] .plot').layout.yaxis.range")
    assert y_range[0] < 0.25 < y_range[1] and y_range[1] - y_range[0] <= 0.1
    assert 0.25 - y_range[0] == pytest.approx(y_range[1] - 0.25)
    screenshot(page, "run-page-flat-series", "#charts")
    console.assert_clean()


def test_a_resume_after_a_crash_redraws_the_replaced_steps_live(app_server, page, console):
    run_id, token = running_run_with_token(app_server)

    def running(seq: int, step: int) -> dict[str, Any]:
        return {"seq": seq, "time": 1000.0 + seq, "kind": "status", "status": "running", "step": step}

    def loss(seq: int, step: int, value: float) -> dict[str, Any]:
        return {"seq": seq, "time": 1000.0 + seq, "kind": "metric", "step": step, "values": {"loss": value}}

    # Attempt 1 logged steps 1..15, then died; its last checkpoint was at step 10.
    post_events(app_server, run_id, token, [running(0, 0)] + [loss(s, s, 1.0) for s in range(1, 16)])
    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    wait_points(page, "loss", "loss", 14, timeout_s=30)
    page.evaluate("window.__sameDocument = true")

    # Attempt 2 resumes at step 10 and logs 11..12 again, with other values: the chart follows it live.
    post_events(app_server, run_id, token, [running(16, 10), loss(17, 11, 2.0), loss(18, 12, 2.0)])
    page.wait_for_function("""() => {
        const t = document.querySelector('[data-chart="loss"] .plot')?.data?.find((t) => t.name === 'loss');
        return t && t.x.length === 12 && t.y[11] === 2;
    }""", timeout=30_000)
    ys = page.evaluate("""() => document.querySelector('[data-chart="loss"] .plot').data
        .find((t) => t.name === 'loss').y""")
    assert ys == [1.0] * 10 + [2.0] * 2
    assert page.evaluate("window.__sameDocument === true"), "the page reloaded instead of redrawing its charts"
    console.assert_clean()


def test_a_chart_drawn_at_one_step_widens_its_x_axis_for_the_next_live_points(app_server, page, console):
    run_id, token = running_run_with_token(app_server)

    def log_and_eval(seq: int, step: int, loss: float, val_loss: float) -> list[dict[str, Any]]:
        return [{"seq": seq, "time": 1000.0 + seq, "kind": "metric", "step": step, "values": {"loss": loss}},
                {"seq": seq + 1, "time": 1001.0 + seq, "kind": "eval", "step": step, "values": {"val/loss": val_loss}}]

    # The first log and the first eval at step 10: loss and val/loss differ, so only the x range is fixed.
    post_events(app_server, run_id, token, log_and_eval(1, 10, 4.1, 4.0))
    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    wait_points(page, "loss", "loss", 0, timeout_s=30)
    post_events(app_server, run_id, token, log_and_eval(3, 20, 3.9, 3.8))
    wait_points(page, "loss", "val/loss", 1, timeout_s=30)
    page.wait_for_timeout(500)  # let the live points' redraw settle
    x_range = page.evaluate("document.querySelector('[data-chart=\"loss\"] .plot')._fullLayout.xaxis.range")
    assert x_range[0] <= 10 and x_range[1] >= 20, f"the step-20 points lie outside the x axis {x_range}"
    console.assert_clean()


def test_checkpoints_and_attempts_tables_scroll_in_their_cards_on_a_phone(app_server, page, console):
    run_id = app_server.client.post("/api/runs", json={"name": "phone", "config": {}}).json()["id"]
    ckpts = Path(app_server.client.get(f"/api/runs/{run_id}").json()["run_dir"]) / "checkpoints"
    for step in (30, 40):
        folder = ckpts / f"step_{step:06d}"
        folder.mkdir(parents=True)
        with (folder / "model.safetensors").open("wb") as f:
            f.truncate(95_963_550)  # a sparse file: "91.5 MB" in the Size column
    (ckpts / "latest").write_text("step_000040")
    (ckpts / "best").write_text("step_000040")

    def job(session: Any) -> None:
        run = session.get(Run, run_id)
        run.status, run.step, run.total_steps, run.reason = "stopped", 40, 80, "received SIGTERM"
        run.started_at = time.time() - 100
        run.attempts = [{"started_at": run.started_at, "ended_at": run.started_at + 46, "status": "stopped",
                         "reason": "received SIGTERM", "exit_code": 0}]
        session.add(run)

    app_server.services.writer.call(job)
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    page.locator("#checkpoints tbody tr").nth(1).wait_for()
    page.locator("#attempts tbody tr").first.wait_for()
    overflow = sideways_scroll(page)
    screenshot(page, "run-page-checkpoints-phone", "#checkpoints")
    assert overflow <= 0, f"the run page is {overflow}px wider than a 390 px phone"
    console.assert_clean()


def test_elapsed_axis_counts_from_the_run_start_in_every_chart(app_server, page, console):
    run_id, token = running_run_with_token(app_server)
    start = app_server.client.get(f"/api/runs/{run_id}").json()["started_at"]
    # A train log 5 s in, then the first eval 20 s in: the Loss chart holds both, the Zero-shot chart only the eval.
    events = [{"seq": 1, "time": start + 5, "kind": "metric", "step": 10, "values": {"loss": 4.1}},
              {"seq": 2, "time": start + 20, "kind": "eval", "step": 10,
               "values": {"val/loss": 4.0, "val/zeroshot_top1": 0.1}}]
    post_events(app_server, run_id, token, events)
    page.goto(f"{app_server.base_url}/#/runs/{run_id}?x=elapsed")
    wait_points(page, "zeroshot", "val/zeroshot_top1", 0, timeout_s=30)
    wait_points(page, "loss", "val/loss", 0, timeout_s=30)
    xs = page.evaluate("""() => Object.fromEntries(['loss', 'zeroshot'].flatMap((c) =>
        document.querySelector(`[data-chart="${c}"] .plot`).data.filter((t) => t.x.length)
          .map((t) => [`${c}:${t.name}`, t.x[0]])))""")
    assert xs["loss:loss"] == pytest.approx(5) and xs["loss:val/loss"] == pytest.approx(20)
    assert xs["zeroshot:val/zeroshot_top1"] == pytest.approx(20), f"one eval, two elapsed times: {xs}"
    console.assert_clean()


def test_the_compare_config_diff_shows_the_names_and_tags_runs_have_now(app_server, page, console):
    ids = [app_server.client.post("/api/runs", json={"name": "same", "config": {}, "tags": ["sweep"]}).json()["id"]
           for _ in range(2)]
    patched = app_server.client.patch(f"/api/runs/{ids[1]}", json={"name": "renamed", "tags": ["sweep", "diverged"]})
    assert patched.status_code == 200, patched.text
    page.goto(f"{app_server.base_url}/#/compare?ids={','.join(ids)}")
    page.locator("#config-diff tbody tr").first.wait_for()
    rows = {r.locator("th").inner_text(): r.locator("td").all_inner_texts()
            for r in page.locator("#config-diff tr.differs").all()}
    assert rows.get("name") == ['"same"', '"renamed"'], rows
    assert "diverged" not in rows["tags"][0] and "diverged" in rows["tags"][1]
    console.assert_clean()


def test_the_new_run_form_calls_a_config_valid_only_if_this_machine_can_run_it(live_server, page, console):
    page.goto(live_server.base_url + "/#/new")
    page.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''", timeout=60_000)
    page.click("details.advanced summary")
    area = page.locator("#config-yaml")
    page.wait_for_function("() => document.querySelector('.validation-status').textContent === 'Config is valid.'")
    text = area.input_value()
    assert "num_workers: 1" in text
    area.fill(text.replace("num_workers: 1", "num_workers: 100"))  # fine for a config, too many for this CPU
    page.locator(".other-errors li", has_text="data.num_workers").wait_for()
    assert "Config is valid." not in page.locator(".validation-status").inner_text()
    page.click("#start-run")
    assert "#/new" in page.url and live_server.get("/api/runs").json()["total"] == 0
    console.assert_clean()


def test_a_finished_run_trains_longer_from_its_page(app_server, page, console):
    run = app_server.client.post("/api/runs", json={"name": "done", "config": {"train": {"steps": 40}}}).json()
    checkpoints = Path(run["run_dir"]) / "checkpoints"
    (checkpoints / "step_000040").mkdir(parents=True)
    (checkpoints / "latest").write_text("step_000040")

    def finish(session: Any) -> None:
        row = session.get(Run, run["id"])
        row.status, row.step, row.total_steps, row.started_at, row.finished_at = "finished", 40, 40, 1000.0, 1100.0
        session.add(row)

    app_server.services.writer.call(finish)
    page.goto(f"{app_server.base_url}/#/runs/{run['id']}")
    assert page.locator("#resume-run").count() == 0  # Resume is for runs that ended early
    page.click("#continue-run")
    number = page.locator("dialog.confirm[open] #dialog-number")
    assert number.input_value() == "80"
    number.fill("40")  # no more steps than it has: asked again, with the reason
    page.locator("dialog.confirm[open]").get_by_role("button", name="Resume").click()
    page.locator("dialog.confirm[open] #dialog-number-error", has_text="41 or more").wait_for()
    screenshot(page, "train-longer-dialog")
    page.locator("dialog.confirm[open] #dialog-number").fill("120")
    page.locator("dialog.confirm[open] #dialog-number").press("Enter")
    page.locator(".info-box", has_text="Queued").wait_for()
    resumed = app_server.client.get(f"/api/runs/{run['id']}").json()
    assert resumed["status"] == "queued" and resumed["config"]["train"]["steps"] == 120
    console.assert_clean()


def test_the_best_label_stays_on_the_line_of_its_values_when_the_header_wraps(app_server, page, console):
    run_id = app_server.client.post("/api/runs", json={"name": "many metrics", "config": {}}).json()["id"]
    names = ["loss", "acc", "similarity", "val/loss", "val/acc", "val/i2t_R@1", "val/t2i_R@1", "val/zeroshot_top1"]

    def with_metrics(session: Any) -> None:
        row = session.get(Run, run_id)
        row.latest = {n: 0.123456 + i for i, n in enumerate(names)}
        row.best = {n: 0.654321 + i for i, n in enumerate(names)}
        session.add(row)

    app_server.services.writer.call(with_metrics)
    for width in (1280, 1000, 820):  # narrower, a phone layout gives each label a row of its own
        page.set_viewport_size({"width": width, "height": 900})
        page.goto(f"{app_server.base_url}/#/runs/{run_id}")
        values = page.locator(".run-metrics .metrics").nth(1).locator(".metric").first
        values.wait_for()
        label = page.locator(".run-metrics .label", has_text="Best").bounding_box()
        first_value = values.bounding_box()
        assert abs(label["y"] + label["height"] - (first_value["y"] + first_value["height"])) < 4, (
            f"at {width}px the Best label ends a line and its values start the next")
    screenshot(page, "run-header-many-metrics", ".run-head")
    console.assert_clean()
