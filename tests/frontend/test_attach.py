"""The dashboard shows a run started by hand (`cliplab train --server`) live, marked as attached, and stops it.

Debian's chromium against a real `cliplab serve` and a real `cliplab train` subprocess; screenshots land in
test-artifacts/.
"""

from __future__ import annotations

import pytest

from tests.attach_support import demo_config, trainers  # noqa: F401 - trainers is a fixture
from tests.backend_fixtures import wait_until
from tests.browser_fixtures import browser, console, page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def chart_points(page, chart: str, name: str) -> int:
    return page.evaluate("""([chart, name]) => {
        const gd = document.querySelector(`[data-chart="${chart}"] .plot`);
        const t = gd?.data?.find((t) => t.name === name && t.visible !== false);
        return t ? t.x.length : 0;
    }""", [chart, name])


def test_an_attached_run_streams_into_the_dashboard_marked_attached_and_stops_from_it(
        live_server_factory, trainers, page, console):
    server = live_server_factory()
    cfg = demo_config(steps=3000, eval_every=10)
    cfg["eval"]["zeroshot"] = False
    trainer = trainers(server.data_dir, cfg).start("--server", server.base_url)

    page.goto(server.base_url + "/#/runs")
    row = page.locator("tr[data-run-id]", has=page.locator(".attached-badge"))
    row.locator(".status", has_text="running").wait_for(timeout=180_000)
    assert "attached" in row.locator(".col-status").inner_text()
    run_id = row.get_attribute("data-run-id")
    screenshot(page, "runs-list-attached")

    page.goto(f"{server.base_url}/#/runs/{run_id}")
    page.locator(".run-title .attached-badge").wait_for()
    meta = page.locator(".run-meta").inner_text()
    assert server.run(run_id)["attached_host"] in meta and str(trainer.run_dir.resolve()) in meta
    first = wait_until(lambda: chart_points(page, "loss", "loss"), 120, 0.25, "loss points")
    wait_until(lambda: chart_points(page, "loss", "loss") > first, 120, 0.25, "live loss points")
    page.wait_for_function("() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'", timeout=120_000)
    screenshot(page, "run-page-attached")

    page.click("#stop-run")
    dialog = page.locator("dialog.confirm[open]")
    assert "next poll" in dialog.inner_text()
    dialog.get_by_role("button", name="Stop run").click()
    page.locator(".run-title .status", has_text="stopped").wait_for(timeout=120_000)
    assert trainer.wait(60) == 0, trainer.output()
    state = page.locator(".state-box .info-box").inner_text()
    assert "stop requested from the dashboard" in state and "--resume latest" in state
    assert page.locator("#resume-run").is_disabled()  # the dashboard cannot relaunch it; the box says how
    screenshot(page, "run-page-attached-stopped")
    console.assert_clean()
