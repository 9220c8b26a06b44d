"""The run page's System charts, attempts and notes, in Debian's chromium against a real `cliplab serve` with
real trainer subprocesses. Screenshots land in test-artifacts/; every test asserts no console errors.
Run: timeout 900 python -m pytest -q -m browser tests/frontend/test_run_meta.py
"""

from __future__ import annotations

from typing import Any

import pytest

from contract.events import STOP_REQUESTED_REASON

from tests.backend.test_ingest import _post, _running_with_token
from tests.backend_fixtures import wait_until
from tests.browser_fixtures import browser, console, page, screenshot  # noqa: F401 - fixtures
from tests.frontend.test_pages import trace_points, wait_points

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def fast_config(steps: int, **train: Any) -> dict[str, Any]:
    """A tiny CPU run on the demo dataset that a shared test machine gets through quickly."""
    return {
        "name": "meta",
        "model": {"preset": "tiny-vit"},
        "data": {"train": "demo", "val": "demo", "num_workers": 0},
        "optim": {"warmup_steps": 2},
        "train": {"batch_size": 8, "steps": steps, "log_every": 1, **train},
        "eval": {"every": 1000, "batch_size": 8, "max_samples": 16, "matrix_size": 4, "zeroshot": False},
        "checkpoint": {"every": 2, "keep_last": 1},
    }


def start_run(server: Any, config: dict[str, Any], **body: Any) -> str:
    r = server.post("/api/runs", json={"config": config, "gpus": 0, **body})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_system_charts_fill_while_the_run_trains(live_server_factory, page, console):
    server = live_server_factory(max_cpu_runs=1)
    run_id = start_run(server, fast_config(400, system_every_s=0.5))
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    page.locator(".run-title .status", has_text="running").wait_for(timeout=120_000)
    system = page.locator("section#system")
    system.wait_for(state="visible", timeout=60_000)
    first = wait_points(page, "sys-cpu", "sys/cpu_percent", 0, timeout_s=60)
    wait_points(page, "sys-cpu", "sys/cpu_percent", first, timeout_s=60)  # live points from the stream
    assert trace_points(page, "sys-memory", "sys/rss_gib") > 0
    # Each group has its own x-axis choice: switching the System charts to time leaves the training charts on step.
    assert page.is_checked("#charts input[name=xmode][value=step]")
    page.check("#system input[name=system-xmode][value=time]")
    page.wait_for_function("""() => document.querySelector('[data-chart="sys-cpu"] .plot')?.layout?.xaxis?.type === 'date'""")
    assert page.is_checked("#charts input[name=xmode][value=step]")
    assert page.evaluate("document.querySelectorAll('#smoothing').length") == 1
    # System series live in their own group, not among the training charts.
    assert page.locator("#charts [data-chart^='sys'], #charts [data-chart^='metric:sys/']").count() == 0
    assert page.locator("#system [data-chart='loss']").count() == 0
    assert server.run(run_id)["status"] == "running"
    screenshot(page, "run-page-system-charts", "section#system")
    screenshot(page, "run-page-with-system-group")
    server.post(f"/api/runs/{run_id}/stop")
    server.wait_status(run_id, ("stopped",), timeout=120)
    console.assert_clean()


def test_a_run_without_system_metrics_shows_no_system_group(live_server_factory, page, console):
    server = live_server_factory(max_cpu_runs=1)
    run_id = start_run(server, fast_config(3, system_every_s=0))
    server.wait_status(run_id, ("finished",), timeout=180)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    wait_points(page, "loss", "loss", 0, timeout_s=60)
    assert page.locator("section#system").is_hidden()
    console.assert_clean()


def test_resume_from_the_page_keeps_the_first_start_and_lists_both_attempts(live_server_factory, page, console):
    server = live_server_factory(max_cpu_runs=1, stop_grace_s=60)
    run_id = start_run(server, fast_config(12, system_every_s=0))
    first = wait_until(lambda: (lambda r: r if r["step"] >= 2 else None)(server.run(run_id)), 180, 0.3,
                       "the run to reach step 2")
    server.post(f"/api/runs/{run_id}/stop").raise_for_status()
    server.wait_status(run_id, ("stopped",), timeout=120)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    rows = page.locator("#attempts tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1 and STOP_REQUESTED_REASON in rows.first.inner_text()

    page.click("#resume-run")
    page.locator("dialog.confirm[open]").get_by_role("button", name="Resume").click()
    page.wait_for_function("() => document.querySelectorAll('#attempts tbody tr').length === 2", timeout=60_000)
    page.locator("#attempts tbody tr:nth-child(2) .status", has_text="finished").wait_for(timeout=180_000)
    done = server.run(run_id)
    assert done["started_at"] == first["started_at"] and len(done["attempts"]) == 2
    first_row, second_row = rows.nth(0).inner_text(), rows.nth(1).inner_text()
    assert "stopped" in first_row and "finished" in second_row
    # The header's start is the first attempt's, and its duration the attempts' sum, not start to finish.
    shown_start = page.evaluate("(t) => import('/util.js').then((u) => u.fmtDateTime(t))", first["started_at"])
    started_dd = page.locator(".run-meta dt:text-is('Started') + dd")
    assert started_dd.inner_text() == shown_start
    shown = page.locator(".run-meta dd.duration").inner_text()
    expected = page.evaluate("(s) => import('/util.js').then((u) => u.fmtDuration(s))", done["duration_s"])
    assert shown == expected
    screenshot(page, "run-page-attempts", "section#attempts")
    screenshot(page, "run-page-resumed")
    console.assert_clean()


def test_notes_edited_in_the_page_and_by_patch_show_in_the_list_and_filter_it(live_server_factory, page, console):
    server = live_server_factory(max_cpu_runs=1)
    run_id = start_run(server, fast_config(400, system_every_s=0), name="lr-probe", tags=["sweep"])
    other_id = start_run(server, fast_config(4), name="baseline")  # stays queued behind the first
    server.wait_status(run_id, ("running",), timeout=120)
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    page.locator("#notes .run-notes", has_text="No notes yet").wait_for()

    # Edited in the page while the run trains; a bad tag gets its message beside the tag box and stores nothing.
    console.allow("status of 422")
    page.click("#edit-run-meta")
    page.fill("#edit-tags", "sweep, " + "t" * 65)
    page.fill("#edit-notes", "Warmup 2 steps: does the loss spike?\nCompare with baseline.")
    page.click("#save-run-meta")
    page.locator("#edit-tags-error", has_text="tag 2:").wait_for()
    assert page.get_attribute("#edit-tags", "aria-invalid") == "true"
    assert server.run(run_id)["notes"] == ""
    page.fill("#edit-tags", "sweep, spiky")
    page.fill("#edit-name", "lr-probe (warmup 2)")
    page.click("#save-run-meta")
    page.locator("#notes .run-notes", has_text="does the loss spike?").wait_for()
    stored = server.run(run_id)
    assert stored["notes"] == "Warmup 2 steps: does the loss spike?\nCompare with baseline."
    assert stored["tags"] == ["sweep", "spiky"] and stored["name"] == "lr-probe (warmup 2)"
    assert stored["status"] == "running"
    page.locator(".run-title h1", has_text="lr-probe (warmup 2)").wait_for()
    assert page.locator(".run-title .tag", has_text="spiky").count() == 1

    # Edited through the API: the open page follows from its stream.
    server.client.patch(f"/api/runs/{run_id}", json={"notes": "Spiky at step 40; keep warmup longer."}).raise_for_status()
    page.locator("#notes .run-notes", has_text="Spiky at step 40").wait_for()
    screenshot(page, "run-page-notes", "section#notes")

    # The list shows each run's notes under its name, and the Name filter searches them.
    server.client.patch(f"/api/runs/{other_id}", json={"notes": "the reference run"}).raise_for_status()
    page.goto(f"{server.base_url}/#/runs")
    row = page.locator(f"tr[data-run-id='{run_id}']")
    row.locator(".row-notes", has_text="Spiky at step 40").wait_for()
    page.locator(f"tr[data-run-id='{other_id}'] .row-notes", has_text="the reference run").wait_for()
    page.fill("#filter-name", "keep warmup")
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 1")
    assert row.is_visible()
    server.client.patch(f"/api/runs/{other_id}", json={"notes": "also: keep warmup"}).raise_for_status()
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 2")  # live, no reload
    screenshot(page, "runs-list-notes")
    server.post(f"/api/runs/{run_id}/stop")
    console.assert_clean()


def test_live_system_samples_at_one_step_all_reach_the_chart(app_server, page, console):
    # A long eval holds the step still while the sampling thread goes on: each sample is a point.
    run_id, token = _running_with_token(app_server)
    sample = lambda seq, step, t, cpu: {"seq": seq, "time": t, "kind": "system", "step": step,  # noqa: E731
                                        "values": {"sys/cpu_percent": cpu}}
    _post(app_server, run_id, token, [sample(0, 4, 1000.0, 50.0)]).raise_for_status()
    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    wait_points(page, "sys-cpu", "sys/cpu_percent", 0, timeout_s=30)
    _post(app_server, run_id, token, [sample(1, 5, 1005.0, 60.0), sample(2, 5, 1010.0, 70.0),
                                      sample(3, 5, 1015.0, 80.0)]).raise_for_status()
    wait_points(page, "sys-cpu", "sys/cpu_percent", 3, timeout_s=30)
    ys = page.evaluate("""() => document.querySelector('[data-chart="sys-cpu"] .plot').data
        .find((t) => t.name === 'sys/cpu_percent').y""")
    assert ys == [50.0, 60.0, 70.0, 80.0]
    console.assert_clean()
