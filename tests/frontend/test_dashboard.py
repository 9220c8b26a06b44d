"""The dashboard as a W&B/MLflow user expects it (issue 12), in Debian's chromium against the real app.

One server per module (uvicorn in a thread, real SQLite) holds a small sweep of finished runs whose events
were posted through the ingest API exactly as a trainer posts them, so every test starts from the same
runs without waiting for training. Each test asserts the page logged no console errors.

Screenshots at desktop and phone size of every page go to $CLIPLAB_ARTIFACTS_DIR (default: a folder under
pytest's tmp, printed at the end of the module). Run:
    CLIPLAB_ARTIFACTS_DIR=test-artifacts/dashboard python -m pytest -q -m browser tests/frontend/test_dashboard.py
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.backend_fixtures import AppServer, free_port, make_data_dir
from tests.browser_fixtures import CHROMIUM_ARGS, ConsoleLog, browser  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
STEPS = 60
EVAL_EVERY = 20
# Markup in user strings must reach Plotly as text (issue 11 point 5).
MARKUP_RUN = 'lr-high <a href="https://example.com/x">link</a>'
MARKUP_METRIC = "<b>bold</b>_metric"


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: $CLIPLAB_ARTIFACTS_DIR, else a folder under pytest's tmp."""
    folder = Path(os.environ.get("CLIPLAB_ARTIFACTS_DIR") or tmp_path_factory.mktemp("dashboard-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    print(f"\ndashboard screenshots: {folder}")


def post_events(server: AppServer, run_id: str, token: str, events: list[dict[str, Any]]) -> None:
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def start_posting(server: AppServer, name: str, config: dict[str, Any]) -> tuple[str, str]:
    """A created run turned into what the launcher leaves after spawning a trainer: running, with a token."""
    from backend.models import Run
    from backend.services.ingest import grant_token

    r = server.client.post("/api/runs", json={"name": name, "config": config, "tags": ["sweep"]})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]

    def job(session: Any) -> str:
        run = session.get(Run, run_id)
        token = grant_token(run)
        run.status, run.started_at = "running", time.time() - 120
        session.add(run)
        return token

    return run_id, server.services.writer.call(job)


def finish(server: AppServer, run_id: str) -> None:
    from backend.models import Run

    def job(session: Any) -> None:
        run = session.get(Run, run_id)
        run.status, run.finished_at, run.exit_code = "finished", time.time(), 0
        session.add(run)

    server.services.writer.call(job)


def training_events(lr: float, final_loss: float, seed: int) -> list[dict[str, Any]]:
    """Noisy training metrics, evals every EVAL_EVERY steps and one similarity matrix per eval."""
    events: list[dict[str, Any]] = []
    t0 = 1_000_000.0 + seed * 10_000
    seq = 0

    def add(kind: str, step: int, **body: Any) -> None:
        nonlocal seq
        seq += 1
        events.append({"seq": seq, "time": t0 + step, "kind": kind, "step": step, **body})

    for step in range(1, STEPS + 1):
        noise = 0.25 * math.sin(step * 2.7 + seed) * (1 if step % 2 else -1)
        loss = final_loss + 2.0 * math.exp(-step / 15) + noise
        add("metric", step, total_steps=STEPS, values={
            "loss": round(loss, 5), "acc": round(min(1.0, step / STEPS + noise / 10), 5),
            "lr": lr * min(1.0, step / 5), "samples_per_s": 100.0 + step % 7, "samples_per_s_per_device": 100.0 + step % 7,
            MARKUP_METRIC: 1.0 + step % 3})
        if step % EVAL_EVERY == 0:
            k = step // EVAL_EVERY
            add("eval", step, values={"val/loss": round(final_loss + 1.5 / k, 5), "val/acc": round(0.2 * k + seed / 50, 5),
                                      "val/i2t_R@1": round(0.1 * k + seed / 40, 5)})
            add("matrix", step, captions=CAPTIONS, similarity=similarity(k), thumbnails=[], logit_scale=14.3)
    add("eval", STEPS, values={"val/zeroshot_top1": 0.5})  # a chart with one point
    return events


CAPTIONS = ["a red square on a white table", "a green circle", "a blue triangle beside a yellow star and a cat",
            "<i>italic</i> markup in a caption", "a black line", "a very long caption about a grey cloud drifting "
            "slowly over a wide and quiet valley in the early morning light"]


def similarity(k: int) -> list[list[float]]:
    """Diagonal grows with each eval (0.3, 0.6, 0.9): a matrix whose colours must mean the same at each step."""
    n = len(CAPTIONS)
    return [[round(0.3 * k if i == j else 0.05 * ((i + j) % 3), 4) for j in range(n)] for i in range(n)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A served app with three finished runs of a learning-rate sweep: {"server", "runs": {name: id}}."""
    from backend.settings import Settings

    root = tmp_path_factory.mktemp("dashboard-app")
    settings = Settings(data_dir=make_data_dir(root, None), port=free_port(), max_cpu_runs=0, database_url=None,
                        token=None)
    server = AppServer(settings).start()
    runs = {}
    for seed, (name, lr, batch, final) in enumerate([("lr-low", 1e-4, 16, 1.2), ("lr-mid", 1e-3, 8, 0.4),
                                                     (MARKUP_RUN, 1e-2, 32, 0.9)]):
        config = {"optim": {"lr": lr}, "train": {"batch_size": batch, "steps": STEPS}}
        run_id, token = start_posting(server, name, config)
        post_events(server, run_id, token, training_events(lr, final, seed))
        finish(server, run_id)
        runs[name] = run_id
    try:
        yield {"server": server, "runs": runs}
    finally:
        server.stop()


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


class Pages:
    """New browser pages (one context each) that record console errors into `console`."""

    def __init__(self, browser: Any, console: ConsoleLog) -> None:
        self.browser, self.console, self.contexts = browser, console, []

    def open(self, viewport: dict[str, int] = DESKTOP, **context_options: Any) -> Any:
        context = self.browser.new_context(viewport=viewport, **context_options)
        context.set_default_timeout(30_000)
        self.contexts.append(context)
        pg = context.new_page()
        pg.on("console", self.console.on_console)
        pg.on("pageerror", self.console.on_page_error)
        return pg

    def close(self) -> None:
        for c in self.contexts:
            c.close()


@pytest.fixture
def pages(browser: Any, console: ConsoleLog) -> Iterator[Pages]:
    p = Pages(browser, console)
    yield p
    p.close()


def chart_ready(page: Any, chart: str) -> None:
    page.wait_for_function(
        f"""() => {{ const gd = document.querySelector('[data-chart="{chart}"] .plot');
                    return gd && gd.data && gd.data.some((t) => t.visible !== false && t.x.length > 0); }}""")


def shoot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


# ---- 1: nothing offers to leave the machine ----------------------------------------------------------------


def test_charts_offer_png_download_but_no_share_button_or_plotly_logo(sweep, pages, console):
    page = pages.open()
    run_id = sweep["runs"]["lr-mid"]
    page.goto(f"{sweep['server'].base_url}/#/runs/{run_id}")
    chart_ready(page, "loss")
    page.wait_for_function("() => document.querySelectorAll('.chart-card .modebar').length === "
                           "document.querySelectorAll('.chart-card').length")
    toolbars = page.evaluate("""() => [...document.querySelectorAll('.chart-card .modebar')].map((bar) =>
        [...bar.querySelectorAll('.modebar-btn')].map((b) => b.getAttribute('data-title') || b.className.baseVal
          || b.getAttribute('class')))""")
    assert toolbars, "no chart toolbars found"
    for buttons in toolbars:
        assert "Download plot as a PNG" in buttons, buttons
        assert not [b for b in buttons if "Share" in b or "Cloud" in b or "logo" in b], buttons
    assert page.locator(".modebar a[href*='plotly']").count() == 0, "the Plotly logo links off the machine"
    console.assert_clean()


# ---- issue 11 point 5: user text reaches Plotly as text, never as markup --------------------------------


def test_run_and_metric_names_with_markup_show_as_text_in_chart_legends(sweep, pages, console):
    page = pages.open()
    ids = ",".join(sweep["runs"][n] for n in ("lr-mid", MARKUP_RUN))
    page.goto(f"{sweep['server'].base_url}/#/compare?ids={ids}")
    chart = f"metric:{MARKUP_METRIC}"
    page.wait_for_function(f"""() => [...document.querySelectorAll('[data-chart]')]
        .some((c) => c.dataset.chart === {chart!r} && c.querySelector('.legend .legendtext'))""")
    chart_ready(page, "loss")
    legends = page.evaluate(f"""() => {{
        const card = [...document.querySelectorAll('[data-chart]')].find((c) => c.dataset.chart === {chart!r});
        return [...card.querySelectorAll('.legendtext')].map((t) => t.textContent);
    }}""")
    assert f"lr-mid · {MARKUP_METRIC}" in legends, legends
    assert f"{MARKUP_RUN} · {MARKUP_METRIC}" in legends, legends
    loss_legends = page.locator('[data-chart="loss"] .legendtext').all_text_contents()
    assert f"{MARKUP_RUN} · loss" in loss_legends, loss_legends
    # No markup took effect anywhere in any chart: no links, no bold or italic runs of text.
    assert page.locator(".chart-card svg a").count() == 0
    styled = page.evaluate("""() => [...document.querySelectorAll('.chart-card svg tspan')]
        .filter((t) => /bold|italic/.test(t.getAttribute('style') || '')).map((t) => t.textContent)""")
    assert styled == []
    # The hover box, too, shows the names as typed.
    box = page.locator('[data-chart="loss"] .nsewdrag').bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_selector('[data-chart="loss"] .hoverlayer .legendtext, [data-chart="loss"] .hoverlayer text')
    hover = page.locator('[data-chart="loss"] .hoverlayer').text_content()
    assert MARKUP_RUN in hover, hover
    assert page.locator(".hoverlayer a").count() == 0
    console.assert_clean()


# ---- 4: smoothing done right ------------------------------------------------------------------------------


def debiased_ema(values: list[float], weight: float) -> list[float]:
    out, acc = [], 0.0
    for n, v in enumerate(values, start=1):
        acc = acc * weight + (1 - weight) * v
        out.append(acc / (1 - weight ** n))
    return out


def hover_lines(page: Any, chart: str, fraction: float) -> list[str]:
    """Move the mouse over `chart` at `fraction` of its width; the unified hover box's lines."""
    box = page.locator(f'[data-chart="{chart}"] .nsewdrag').bounding_box()
    page.mouse.move(box["x"] + box["width"] * fraction, box["y"] + box["height"] * 0.5)
    page.wait_for_selector(f'[data-chart="{chart}"] .hoverlayer .legend')
    return page.evaluate(f"""() => [...document.querySelectorAll('[data-chart="{chart}"] .hoverlayer .legend text')]
        .map((t) => t.textContent)""")


def test_smoothing_is_a_debiased_ema_of_training_series_only_and_hover_shows_raw_and_smoothed(sweep, pages, console):
    page = pages.open()
    page.goto(f"{sweep['server'].base_url}/#/runs/{sweep['runs']['lr-mid']}")
    chart_ready(page, "loss")
    page.locator("#smoothing").fill("0.8")
    page.wait_for_function("""() => document.querySelector('[data-chart="loss"] .plot').data
        .some((t) => t.name === 'loss' && t.visible === true && t.y.length > 0 && t.line.width > 1.5)""")
    traces = page.evaluate("""() => Object.fromEntries(['loss', 'lr'].map((key) => [key,
        document.querySelector(`[data-chart="${key}"] .plot`).data.map((t, i) => ({i, name: t.name, x: t.x, y: t.y,
            visible: t.visible, opacity: t.opacity ?? 1, hoverinfo: t.hoverinfo ?? null}))]))""")
    loss = [t for t in traces["loss"] if t["name"] == "loss"]
    raw, smooth = loss[0], loss[1]
    assert raw["i"] < smooth["i"], "the raw line is drawn behind the smoothed one"
    assert raw["opacity"] < 0.5 and raw["hoverinfo"] != "skip", "the raw line stays, faint, and in the hover"
    assert smooth["y"] == pytest.approx(debiased_ema(raw["y"], 0.8))
    val = [t for t in traces["loss"] if t["name"] == "val/loss" and t["visible"] is not False]
    assert len(val) == 1, "eval points are never smoothed"
    lr = [t for t in traces["lr"] if t["name"] == "lr" and t["visible"] is not False]
    assert len(lr) == 1 and lr[0]["opacity"] == 1, "the learning rate is a schedule, never smoothed"

    lines = hover_lines(page, "loss", 0.5)
    step = int(lines[0])
    i = raw["x"].index(step)
    shown = {line.split(":")[0].strip(): float(line.split(":")[1]) for line in lines[1:] if ":" in line}
    assert shown["loss (raw)"] == pytest.approx(raw["y"][i], rel=1e-4), lines
    assert shown["loss (smoothed)"] == pytest.approx(smooth["y"][i], rel=1e-4), lines
    assert shown["loss (raw)"] != pytest.approx(shown["loss (smoothed)"], rel=1e-4)
    console.assert_clean()


# ---- 5: chart controls ----------------------------------------------------------------------------------


def layout_of(page: Any, chart: str) -> dict[str, Any]:
    return page.evaluate(f"""() => {{ const gd = document.querySelector('[data-chart="{chart}"] .plot');
        const L = gd._fullLayout; return {{x: L.xaxis.range, xtype: L.xaxis.type, xzero: L.xaxis.zeroline,
            y: L.yaxis.range, ytype: L.yaxis.type, yzero: L.yaxis.zeroline}}; }}""")


def drag_zoom(page: Any, chart: str, start: float, end: float) -> None:
    """A user's horizontal drag over `chart` from `start` to `end` (fractions of its width)."""
    box = page.locator(f'[data-chart="{chart}"] .nsewdrag').bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * start, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * (start + end) / 2, y, steps=4)
    page.mouse.move(box["x"] + box["width"] * end, y, steps=4)
    page.mouse.up()


def test_chart_controls_log_scale_shared_zoom_markers_one_point_range_and_one_line_for_twins(sweep, pages, console):
    page = pages.open()
    page.goto(f"{sweep['server'].base_url}/#/runs/{sweep['runs']['lr-mid']}")
    for chart in ("loss", "acc", "throughput", "zeroshot"):
        chart_ready(page, chart)

    # Log scale on one chart only.
    page.locator('[data-chart="loss"] input.log-y').check()
    page.wait_for_function("""() => document.querySelector('[data-chart="loss"] .plot')._fullLayout.yaxis.type === 'log'""")
    assert layout_of(page, "acc")["ytype"] == "linear"
    loss = layout_of(page, "loss")
    assert not loss["xzero"] and not loss["yzero"], "no heavy zero line"

    # Markers only where points are few: 60 training points as a line, 3 eval points with markers.
    modes = page.evaluate("""() => Object.fromEntries(document.querySelector('[data-chart="loss"] .plot').data
        .filter((t) => t.visible !== false && t.showlegend !== false).map((t) => [t.name, t.mode]))""")
    assert modes == {"loss": "lines", "val/loss": "lines+markers"}, modes

    # One point (a zero-shot eval at the last step): the axis runs from the start past the point.
    zs = layout_of(page, "zeroshot")["x"]
    assert zs[0] <= 0 and STEPS < zs[1] <= STEPS * 1.2, zs

    # samples/s equals samples/s per device on one device: one line, named for both.
    shown = page.evaluate("""() => document.querySelector('[data-chart="throughput"] .plot').data
        .filter((t) => t.visible === true || (t.visible !== false && t.showlegend !== false)).map((t) => t.name)""")
    assert shown == ["samples_per_s = samples_per_s_per_device"], shown

    # Shared zoom: off, zooming one chart leaves the others; on, they follow, and a reset resets all.
    drag_zoom(page, "loss", 0.3, 0.6)
    page.locator('[data-chart="loss"] .chart-status', has_text="zoomed").wait_for()
    assert layout_of(page, "acc")["x"][1] > STEPS - 1
    page.check("#sync-zoom")  # follows the last zoom at once
    page.wait_for_function("""() => {
        const r = (k) => document.querySelector(`[data-chart="${k}"] .plot`)._fullLayout.xaxis.range;
        return Math.abs(r('acc')[0] - r('loss')[0]) < 1e-6 && Math.abs(r('acc')[1] - r('loss')[1]) < 1e-6; }""")
    drag_zoom(page, "acc", 0.2, 0.5)
    page.wait_for_function("""() => {
        const r = (k) => document.querySelector(`[data-chart="${k}"] .plot`)._fullLayout.xaxis.range;
        return ['loss', 'lr', 'throughput'].every((k) => Math.abs(r(k)[0] - r('acc')[0]) < 1e-6
            && Math.abs(r(k)[1] - r('acc')[1]) < 1e-6); }""")
    page.locator('[data-chart="lr"] .chart-status', has_text="zoomed").wait_for()
    page.locator('[data-chart="acc"] .nsewdrag').dblclick()
    page.wait_for_function("""() => [...document.querySelectorAll('.chart-status')].every((s) => !s.textContent.includes('zoomed'))""")
    assert layout_of(page, "loss")["x"][1] >= STEPS
    console.assert_clean()


# ---- 12: a URL says what you see --------------------------------------------------------------------------


def x_range(page: Any, chart: str) -> list[Any]:
    return page.evaluate(f"""() => document.querySelector('[data-chart="{chart}"] .plot')._fullLayout.xaxis.range
        .map((v) => typeof v === 'string' ? new Date(v.replace(' ', 'T')).getTime() : v)""")


def test_run_page_url_carries_smoothing_x_axis_log_scale_zoom_and_matrix_step(sweep, pages, console):
    page = pages.open()
    base = sweep["server"].base_url
    page.goto(f"{base}/#/runs/{sweep['runs']['lr-mid']}")
    chart_ready(page, "loss")
    page.locator("#smoothing").fill("0.6")
    page.check("input[name=xmode][value=time]")
    page.wait_for_function("""() => document.querySelector('[data-chart="loss"] .plot')._fullLayout.xaxis.type === 'date'""")
    page.locator('[data-chart="acc"] input.log-y').check()
    drag_zoom(page, "loss", 0.25, 0.7)
    page.locator('[data-chart="loss"] .chart-status', has_text="zoomed").wait_for()
    page.wait_for_function("() => Number(document.querySelector('#matrix-step').max) === 2")
    page.focus("#matrix-step")
    page.keyboard.press("Home")
    page.locator("output[for=matrix-step]", has_text="step 20").wait_for()
    page.select_option("#matrix-mode", "softmax")
    page.wait_for_function("() => location.hash.includes('zoom=loss~') && location.hash.includes('mstep=20')")
    url = page.url
    assert "smooth=0.6" in url and "x=time" in url and "log=acc" in url and "mcolor=softmax" in url, url
    zoomed = x_range(page, "loss")

    # A fresh browser context opening the link sees the same view.
    other = pages.open()
    other.goto(url)
    chart_ready(other, "loss")
    other.locator('[data-chart="loss"] .chart-status', has_text="zoomed").wait_for()
    assert other.input_value("#smoothing") == "0.6"
    assert other.is_checked("input[name=xmode][value=time]")
    assert other.is_checked('[data-chart="acc"] input.log-y') and not other.is_checked('[data-chart="loss"] input.log-y')
    assert layout_of(other, "acc")["ytype"] == "log"
    assert x_range(other, "loss") == pytest.approx(zoomed, abs=2)  # milliseconds on a time axis
    assert layout_of(other, "acc")["x"] != layout_of(other, "loss")["x"], "only the zoomed chart is zoomed"
    other.locator("output[for=matrix-step]", has_text="step 20").wait_for()
    assert other.input_value("#matrix-mode") == "softmax"
    smoothed = other.evaluate("""() => document.querySelector('[data-chart="loss"] .plot').data
        .filter((t) => t.name === 'loss' && t.visible === true).length""")
    assert smoothed == 2, "the raw and the smoothed loss line"
    console.assert_clean()


def test_compare_url_carries_the_shared_zoom_and_keeps_it_when_a_run_is_added(sweep, pages, console):
    page = pages.open()
    runs = sweep["runs"]
    page.goto(f"{sweep['server'].base_url}/#/compare?ids={runs['lr-low']},{runs['lr-mid']}&x=elapsed&sync=1")
    chart_ready(page, "loss")
    assert page.is_checked("#sync-zoom") and page.is_checked("input[name=xmode][value=elapsed]")
    drag_zoom(page, "loss", 0.2, 0.6)
    page.wait_for_function("() => /[?&]zoom=[-0-9.e]+~[-0-9.e]+(&|$)/.test(location.hash)")
    zoomed = x_range(page, "acc")
    page.select_option("#add-run", runs[MARKUP_RUN])
    page.get_by_role("button", name="Add", exact=True).click()
    page.wait_for_function(f"() => location.hash.includes({runs[MARKUP_RUN]!r})")
    chart_ready(page, "acc")
    page.locator('[data-chart="acc"] .chart-status', has_text="zoomed").wait_for()
    assert "sync=1" in page.url and "x=elapsed" in page.url
    assert x_range(page, "acc") == pytest.approx(zoomed, rel=1e-6)
    console.assert_clean()


# ---- 2: the runs table ranks a sweep ----------------------------------------------------------------------


def row_names(page: Any) -> list[str]:
    return page.locator(".runs-table tbody tr td.col-name a").all_text_contents()


def column_cells(page: Any, col: str) -> list[str]:
    index = page.evaluate(f"""() => [...document.querySelectorAll('.runs-table thead th')]
        .findIndex((th) => th.dataset.col === {col!r})""")
    assert index >= 0, f"no column {col}"
    return page.evaluate(f"""() => [...document.querySelectorAll('.runs-table tbody tr')]
        .map((tr) => tr.children[{index}].textContent)""")


def test_runs_table_metric_and_config_columns_sort_best_first_filter_and_survive_reload(sweep, pages, console,
                                                                                        artifacts):
    page = pages.open()
    page.goto(f"{sweep['server'].base_url}/#/runs")
    page.locator(".runs-table tbody tr").nth(2).wait_for()
    page.click(".column-picker summary")
    for col in ("best:val/acc", "best:val/loss", "config:optim.lr", "latest:loss"):
        page.locator(f'.column-choice[data-col="{col}"] input').check()
    page.fill("#column-search", "train.batch")  # a long config narrows to what is typed
    assert page.locator(".column-choice:visible").all_text_contents() == [" train.batch_size"]
    page.locator('.column-choice[data-col="config:train.batch_size"] input').check()
    focused = page.evaluate("document.activeElement.closest('.column-choice')?.dataset.col")
    assert focused == "config:train.batch_size", "ticking a box keeps the focus on it"
    page.keyboard.press("Escape")  # closes the panel, as a menu would
    assert page.evaluate("!document.querySelector('.column-picker').open")

    # Best accuracy: the first click puts the highest first; best val loss: the lowest first.
    page.click('th[data-col="best:val/acc"] button.sort')
    assert row_names(page) == [MARKUP_RUN, "lr-mid", "lr-low"]
    assert column_cells(page, "best:val/acc") == ["0.64", "0.62", "0.6"]
    assert page.get_attribute('th[data-col="best:val/acc"]', "aria-sort") == "descending"
    page.click('th[data-col="best:val/loss"] button.sort')
    assert row_names(page) == ["lr-mid", MARKUP_RUN, "lr-low"]
    assert page.get_attribute('th[data-col="best:val/loss"]', "aria-sort") == "ascending"
    page.click('th[data-col="config:train.batch_size"] button.sort')
    assert column_cells(page, "config:train.batch_size") == ["8", "16", "32"]
    # The Best column ranks by the best val/loss, lowest first, not by whatever sorts first as text.
    page.click("th.col-best button.sort")
    assert row_names(page) == ["lr-mid", MARKUP_RUN, "lr-low"]
    assert page.get_attribute("th.col-best", "title") == "Sorts by the best val/loss over the evaluations, lowest first"
    page.click('th[data-col="best:val/acc"] button.sort')
    shoot(page, artifacts, "runs-list-columns-desktop")

    # Filters per column: numbers compare, text matches.
    page.fill('input[data-col-filter="config:optim.lr"]', "< 0.005")
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 2")
    assert row_names(page) == ["lr-mid", "lr-low"]
    url = page.url
    assert "col=best:val/acc" in url and "sort=-best:val/acc" in url and "filter=config:optim.lr" in url, url

    # Kept after a reload (the URL) and on a plain #/runs in the same browser (local storage).
    page.reload()
    page.locator(".runs-table tbody tr").nth(1).wait_for()
    assert row_names(page) == ["lr-mid", "lr-low"]
    assert page.input_value('input[data-col-filter="config:optim.lr"]') == "< 0.005"
    page.goto(f"{sweep['server'].base_url}/#/compare")
    page.goto(f"{sweep['server'].base_url}/#/runs")
    page.locator(".runs-table tbody tr").nth(1).wait_for()
    headers = page.evaluate("[...document.querySelectorAll('.runs-table thead th[data-col]')].map((th) => th.dataset.col)")
    assert headers == ["best:val/acc", "best:val/loss", "config:optim.lr", "latest:loss", "config:train.batch_size"]
    assert row_names(page) == ["lr-mid", "lr-low"]

    # Removing a column drops its filter too.
    page.click('th[data-col="config:optim.lr"] button.remove-col')
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 3")
    assert "optim.lr" not in page.url
    page.evaluate("localStorage.clear()")
    console.assert_clean()


# ---- 10: the matrix ----------------------------------------------------------------------------------------


def matrix_state(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => { const gd = document.querySelector('.matrix-plot');
        return {zmin: gd.data[0].zmin, zmax: gd.data[0].zmax, shapes: gd.layout.shapes || [],
                label: document.querySelector('output[for=matrix-step]').textContent}; }""")


def test_matrix_keeps_one_colour_range_across_steps_marks_the_diagonal_and_lists_full_captions(sweep, pages, console,
                                                                                              artifacts):
    page = pages.open()
    page.goto(f"{sweep['server'].base_url}/#/runs/{sweep['runs']['lr-mid']}")
    page.wait_for_function("() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'")
    latest = matrix_state(page)
    # The steps' diagonals are 0.3, 0.6 and 0.9 and the rest 0..0.1: one range, 0 … 0.9, for all of them.
    assert (latest["zmin"], latest["zmax"]) == (0, 0.9)
    n = len(CAPTIONS)
    diagonal = sorted((s["x0"] + 0.5, s["y0"] + 0.5) for s in latest["shapes"] if s["type"] == "rect")
    assert diagonal == [(i, i) for i in range(n)], "each diagonal cell is outlined"
    page.focus("#matrix-step")
    page.keyboard.press("Home")
    page.locator("output[for=matrix-step]", has_text="step 20").wait_for()
    page.wait_for_function("() => document.querySelector('.matrix-plot').data[0].z[0][0] === 0.3")
    first = matrix_state(page)
    assert (first["zmin"], first["zmax"]) == (0, 0.9), "an early step keeps the same colours"
    assert "0 … 0.9" in page.locator(".matrix-stats").inner_text()
    # Every caption in full, as text (markup in a caption stays text), numbered as in the hover.
    items = page.locator(".matrix-captions li").all_text_contents()
    assert items == CAPTIONS
    assert page.locator(".matrix-captions i").count() == 0
    assert page.get_attribute(".matrix-captions", "start") == "0"
    page.locator("#matrix").screenshot(path=str(artifacts / "matrix-desktop.png"))
    console.assert_clean()


# ---- 6: errors where the eye is ---------------------------------------------------------------------------


def bubble_alignment(page: Any, line: int) -> dict[str, float]:
    """Where the error mark for `line` sits against the textarea's own line `line`."""
    return page.evaluate(f"""() => {{
        const ta = document.querySelector('#config-yaml'), st = getComputedStyle(ta);
        const r = ta.getBoundingClientRect(), lh = parseFloat(st.lineHeight);
        const lineTop = r.top + parseFloat(st.paddingTop) + parseFloat(st.borderTopWidth) + ({line} - 1) * lh - ta.scrollTop;
        const b = document.querySelector('.yaml-line-error[data-line="{line}"]').getBoundingClientRect();
        return {{lineMid: lineTop + lh / 2, bubbleMid: b.top + b.height / 2, lh, bubbleLeft: b.left, bubbleRight: b.right,
                 taLeft: r.left, taRight: r.right, visible: b.height > 0}};
    }}""")


def test_yaml_editor_shows_a_bad_value_beside_its_line_with_line_number_and_field(sweep, pages, console, artifacts):
    page = pages.open()
    page.goto(f"{sweep['server'].base_url}/#/new")
    page.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''")
    page.click("details.advanced summary")
    text = page.input_value("#config-yaml")
    lines = text.split("\n")
    optim = lines.index("optim:")
    lr_line = next(i for i in range(optim + 1, len(lines)) if lines[i].strip().startswith("lr:")) + 1
    lines[lr_line - 1] = "  lr: -1"
    page.fill("#config-yaml", "\n".join(lines))
    mark = page.locator(f'.yaml-line-error[data-line="{lr_line}"]')
    mark.wait_for(state="attached")
    assert mark.text_content().startswith(f"line {lr_line} · optim.lr: ") and "greater than 0" in mark.text_content()
    assert page.locator(".yaml-gutter .bad").all_text_contents() == [str(lr_line)]
    goto = page.locator(".yaml-error-list button.yaml-goto", has_text=f"Line {lr_line}")
    assert "optim.lr" in page.locator(".yaml-error-list li").first.text_content()
    goto.click()  # the list names line and field; a click brings the line (and its mark) into view
    mark.wait_for(state="visible")
    where = bubble_alignment(page, lr_line)
    assert abs(where["bubbleMid"] - where["lineMid"]) < where["lh"] / 2, where
    assert where["taLeft"] < where["bubbleLeft"] and where["bubbleRight"] <= where["taRight"], where
    selected = page.evaluate("""() => { const ta = document.querySelector('#config-yaml');
        return ta.value.slice(ta.selectionStart, ta.selectionEnd); }""")
    assert selected == "  lr: -1"
    page.locator("details.advanced").screenshot(path=str(artifacts / "yaml-error-beside-line.png"))

    # Fixed: the marks go. Broken YAML: the mark sits on the line the parser stopped at.
    lines[lr_line - 1] = "  lr: 0.001"
    page.fill("#config-yaml", "\n".join(lines))
    page.wait_for_function("() => !document.querySelector('.yaml-line-error[data-line]')"
                           " || !document.querySelector('.yaml-line-error').textContent.includes('optim.lr')")
    lines.insert(2, "broken: [unclosed")
    page.fill("#config-yaml", "\n".join(lines))
    parse_mark = page.locator(".yaml-line-error", has_text="does not parse")
    parse_mark.wait_for(state="attached")
    line = int(parse_mark.get_attribute("data-line"))
    assert 3 <= line <= 4, line  # js-yaml reports the unclosed flow list at or just after its line
    console.assert_clean()


# ---- 9: phone, keyboard, dark mode; screenshots of every page -----------------------------------------------


def every_page(sweep: dict[str, Any]) -> dict[str, str]:
    runs, base = sweep["runs"], sweep["server"].base_url
    return {
        "runs-list": f"{base}/#/runs",
        "run-page": f"{base}/#/runs/{runs['lr-mid']}",
        "compare": f"{base}/#/compare?ids={runs['lr-low']},{runs['lr-mid']},{runs[MARKUP_RUN]}",
        "new-run": f"{base}/#/new",
    }


def wait_drawn(page: Any, name: str) -> None:
    if name == "runs-list":
        page.locator(".runs-table tbody tr").nth(2).wait_for()
    elif name in ("run-page", "compare"):
        chart_ready(page, "loss")
        page.wait_for_function("() => [...document.querySelectorAll('.chart-card .plot')].every((p) => p.data)")
        if name == "run-page":
            page.wait_for_function("() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'")
    else:
        page.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''")
    page.wait_for_timeout(300)  # responsive plots re-lay out after the first draw


def test_every_page_fits_a_phone_without_sideways_scroll_and_is_screenshot_at_both_sizes(sweep, pages, console,
                                                                                          artifacts):
    # A plain 390 px viewport: a mobile emulation would widen the layout viewport to fit the content instead.
    desktop, phone = pages.open(DESKTOP), pages.open(PHONE)
    overflow = {}
    for name, url in every_page(sweep).items():
        for size, page in (("desktop", desktop), ("phone", phone)):
            page.goto(url)
            wait_drawn(page, name)
            shoot(page, artifacts, f"{name}-{size}")
            widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            assert size == "desktop" or widths[1] == PHONE["width"]
            if size == "phone" and widths[0] != widths[1]:
                wide = page.evaluate("""() => [...document.querySelectorAll('body *')].filter((el) =>
                    el.getBoundingClientRect().right > window.innerWidth + 0.5).slice(0, 5)
                    .map((el) => el.tagName + '.' + el.className)""")
                overflow[name] = (widths, wide)
    assert not overflow, f"pages wider than a 390 px phone: {overflow}"
    # Legends do not wrap: on the phone a long run name is cut in the legend, whole in the hover.
    phone.goto(every_page(sweep)["compare"])
    wait_drawn(phone, "compare")
    entries = phone.evaluate("""() => [...document.querySelectorAll('[data-chart="loss"] .legendtext')].map((t) => {
        const r = t.getBoundingClientRect(); return {text: t.textContent, right: r.right}; })""")
    assert entries and all(e["right"] <= PHONE["width"] for e in entries), entries
    cut = [e["text"] for e in entries if e["text"].startswith("lr-high")]
    assert cut and all("…" in t and t.endswith(" · loss") or t.endswith(" · val/loss") for t in cut), cut
    # On a phone the runs table is a list of cards, each value labelled.
    phone.goto(every_page(sweep)["runs-list"])
    wait_drawn(phone, "runs-list")
    assert phone.evaluate("getComputedStyle(document.querySelector('.runs-table tbody tr')).display") == "block"
    assert phone.evaluate("""getComputedStyle(document.querySelector('.runs-table td.col-model'), '::before').content""") \
        == '"Model"'
    console.assert_clean()


def luminance(css: str) -> float:
    """Relative luminance (0 black .. 1 white) of an rgb()/rgba()/#hex colour."""
    import re

    if css.startswith("#"):
        rgb = [int(css[i:i + 2], 16) for i in (1, 3, 5)]
    else:
        rgb = [float(v) for v in re.findall(r"[\d.]+", css)[:3]]
    return (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255


def test_dark_mode_follows_the_system_setting_in_pages_charts_and_matrix(sweep, pages, console, artifacts):
    page = pages.open(color_scheme="dark")
    page.goto(every_page(sweep)["run-page"])
    wait_drawn(page, "run-page")
    colours = page.evaluate("""() => {
        const chart = document.querySelector('[data-chart="loss"] .plot')._fullLayout;
        const matrix = document.querySelector('.matrix-plot')._fullLayout;
        const css = (sel, prop) => getComputedStyle(document.querySelector(sel))[prop];
        return {page: css('body', 'backgroundColor'), card: css('.card', 'backgroundColor'), ink: css('body', 'color'),
                plot: chart.plot_bgcolor, chartInk: chart.font.color, grid: chart.xaxis.gridcolor,
                matrixInk: matrix.font.color, button: css('.btn', 'backgroundColor'),
                line: document.querySelector('[data-chart="loss"] .plot').data.find((t) => t.name === 'loss').line.color};
    }""")
    assert luminance(colours["page"]) < 0.15 and luminance(colours["card"]) < 0.15, colours
    assert luminance(colours["plot"]) < 0.15 and luminance(colours["button"]) < 0.2, colours
    assert luminance(colours["ink"]) > 0.7 and luminance(colours["chartInk"]) > 0.7, colours
    assert luminance(colours["matrixInk"]) > 0.7 and luminance(colours["grid"]) < 0.3, colours
    assert luminance(colours["line"]) > 0.35, "lines stay visible on the dark plot"
    shoot(page, artifacts, "run-page-dark")
    page.goto(every_page(sweep)["runs-list"])
    wait_drawn(page, "runs-list")
    shoot(page, artifacts, "runs-list-dark")
    console.assert_clean()


def test_keyboard_users_skip_the_chart_toolbars_with_the_skip_link_and_section_buttons(sweep, pages, console):
    page = pages.open()
    page.goto(every_page(sweep)["run-page"])
    wait_drawn(page, "run-page")
    toolbar_buttons = page.locator(".chart-card .modebar-btn").count()
    assert toolbar_buttons > 40  # what a keyboard user would otherwise tab through
    # Each page starts with focus on its main element; the skip link (first in the document, shown on focus)
    # gets back there from the top bar.
    assert page.evaluate("document.activeElement.id") == "app"
    for _ in range(5):
        page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.id") == "skip-link"
    assert page.evaluate("document.getElementById('skip-link').getBoundingClientRect().top") >= 0, "visible on focus"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "app"
    # From the top of the page, a few tabs reach "Jump to: Logs"; Enter lands in the log section.
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Logs":
            break
    else:
        raise AssertionError("no 'Logs' section button within 12 tabs of the page's top")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "logs"
    top = page.evaluate("document.getElementById('logs').getBoundingClientRect().top")
    assert 0 <= top < DESKTOP["height"] - 200, "the log section is scrolled into view"  # at most the page's end
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Refresh", "the next tab is inside the logs"
    console.assert_clean()


# ---- the helpers behind the above, on their edge cases, in the page ---------------------------------------


def test_view_helpers_map_yaml_lines_parse_filters_urls_and_labels(sweep, pages, console):
    page = pages.open()
    page.goto(f"{sweep['server'].base_url}/#/runs")
    page.wait_for_selector("h1")
    r = page.evaluate("""async () => {
        const y = await import('/yaml_errors.js'), c = await import('/run_columns.js');
        const v = await import('/view_url.js'), ch = await import('/charts.js');
        const yaml = ['name: x', 'optim:', '  # a comment', '  lr: -1', '  betas: [0.9, 1.5]', 'data:',
                      '  "train": demo', 'tags:', '  - a', 'eval:', '  recall_at:', '    - 1'].join('\\n');
        const f = (text, values) => values.map(c.parseFilter(text));
        const q = (s) => v.readView(new URLSearchParams(s));
        return {
            lines: ['optim.lr', 'optim.betas.1', 'data.train', 'tags.0', 'eval.recall_at.0', 'model.preset', 'name']
                .map((p) => y.yamlLineOf(yaml, p)),
            lt: f('< 0.5', [0.4, 0.5, 0.6, null]), ge: f('>=8', [8, 16, 4]), eq: f('= adamw', ['adamw', 'sgd']),
            ne: f('!= 8', [8, 9, null]), text: f('ADAM', ['adamw', 'sgd', null]), empty: f('  ', [1, null]),
            sorted: [3, null, 1, 2].sort((a, b) => c.compareValues(a, b, -1)),
            sortedAsc: [3, null, 1, 2].sort((a, b) => c.compareValues(a, b, 1)),
            dirs: ['val/loss', 'loss', 'val/acc', 'val/i2t_R@1', 'val/zeroshot_top1', 'val/similarity']
                .map(c.higherIsBetter),
            badColumns: ['nope', 'latest:', 'config:x.y', 'best:val/acc'].map((id) => !!c.columnDef(id)),
            view: q('x=time&smooth=0.7&sync=1&log=loss,metric:a~b&zoom=loss~10~20&zoom=metric:a~b~1~2&mstep=40'),
            runsView: c.loadView(new URLSearchParams('col=latest:a~b&col=best:val/acc&sort=-best:val/acc'
                + '&filter=latest:a~b~~x&filter=best:val/acc~>0.5&filter=config:gone~1&col=bogus')),
            bad: q('x=sideways&smooth=abc&zoom=loss~20~10&zoom=junk&mstep=x'),
            clamp: q('smooth=5').view.smoothing,
            label: ch.legendLabel('a very long run name indeed', 'val/loss', 24),
            short: ch.legendLabel('run', 'loss', 24),
            same: ch.sameSeries({step: [1, 2], min: [1, 2], max: [1, 2], last: [1, 2]},
                                {step: [1, 2], min: [1, 2], max: [1, 2], last: [1, 2]}),
            differ: ch.sameSeries({step: [1, 2], min: [1, 2], max: [1, 2], last: [1, 2]},
                                  {step: [1, 2], min: [1, 3], max: [1, 3], last: [1, 3]}),
            emptySame: ch.sameSeries({step: [], min: [], max: [], last: []}, {step: [], min: [], max: [], last: []}),
        };
    }""")
    # A list index or a flow-style entry leads to its parent's line; a key not in the YAML, to none.
    assert r["lines"] == [4, 5, 7, 8, 11, None, 1]
    assert r["lt"] == [True, False, False, False] and r["ge"] == [True, True, False]
    assert r["eq"] == [True, False] and r["ne"] == [False, True, True]
    assert r["text"] == [True, False, False] and r["empty"] == [True, True]
    assert r["sorted"] == [3, 2, 1, None] and r["sortedAsc"] == [1, 2, 3, None], "runs without a value go last"
    assert r["dirs"] == [False, False, True, True, True, True]
    assert r["badColumns"] == [False, False, True, True]
    view = r["view"]
    assert (view["view"]["xMode"], view["view"]["smoothing"], view["view"]["syncZoom"]) == ("time", 0.7, True)
    assert view["matrix"] == {"step": 40, "mode": None}
    bad = r["bad"]
    assert "xMode" not in bad["view"] and "smoothing" not in bad["view"] and bad["matrix"]["step"] is None
    assert r["clamp"] == 0.99
    assert r["runsView"] == {"columns": ["latest:a~b", "best:val/acc"], "sort": {"key": "best:val/acc", "dir": -1},
                             "filters": {"latest:a~b": "~x", "best:val/acc": ">0.5"}}
    assert r["label"] == "a very long… · val/loss" and len(r["label"]) <= 24 and r["short"] == "run · loss"
    assert r["same"] and not r["differ"] and not r["emptySame"]
    zooms = page.evaluate("""async () => {
        const v = await import('/view_url.js');
        const view = v.readView(new URLSearchParams('log=loss,metric:a~b&zoom=loss~10~20&zoom=metric:a~b~1~2&zoom=9~1'));
        return {log: [...view.view.logY], zooms: [...view.zooms]};
    }""")
    assert zooms == {"log": ["loss", "metric:a~b"], "zooms": [["loss", [10, 20]], ["metric:a~b", [1, 2]]]}
    console.assert_clean()
