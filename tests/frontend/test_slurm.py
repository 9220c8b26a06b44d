"""The dashboard with a SLURM executor: a run started from the new-run form as a SLURM job, watched to the end."""

from __future__ import annotations

import pytest

from tests.backend.test_slurm import slurm_server
from tests.browser_fixtures import browser, console, page, screenshot  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow


def test_a_slurm_run_started_from_the_form_trains_to_finished(live_server_factory, slurm_cluster, tmp_path, page,
                                                               console):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    page.goto(server.base_url + "/#/new")
    page.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''", timeout=60_000)

    # SLURM is this server's default: its fields show, this machine's GPU fields do not.
    assert page.locator("#field-executor").input_value() == "slurm"
    assert page.locator("#field-gpus").is_hidden() and page.locator("#field-slurm-nodes").is_visible()
    options = page.locator("#field-slurm-partition option").all_inner_texts()
    assert [o.split(" ")[0] for o in options] == ["debug", "solo"] and "/ 2 nodes" in options[0]  # sinfo's counts
    page.select_option("#field-executor", "local")
    assert page.locator("#field-gpus").is_visible() and page.locator("#field-slurm-nodes").is_hidden()
    page.select_option("#field-executor", "slurm")

    # More nodes than the server allows: the API's 422 lands next to the field.
    console.allow("status of 422")  # the browser logs the refused request itself
    page.fill("#field-name", "from the form")
    page.fill("#field-train-batch-size", "8")
    page.fill("#field-train-steps", "4")
    page.fill("#field-eval-every", "1000")
    page.fill("#field-slurm-nodes", "3")
    page.click("#start-run")
    error = page.locator("#field-slurm-nodes-error")
    try:
        error.wait_for(state="visible", timeout=60_000)
    finally:
        screenshot(page, "new-run-form-slurm-422")
    assert "at most 2" in error.inner_text()
    assert page.locator("#field-slurm-nodes").get_attribute("aria-invalid") == "true"
    assert server.get("/api/runs").json()["total"] == 0

    page.fill("#field-slurm-nodes", "1")
    page.fill("#field-slurm-cpus-per-task", "1")
    page.select_option("#field-slurm-partition", "solo")
    screenshot(page, "new-run-form-slurm")
    page.click("#start-run")
    page.wait_for_url("**/#/runs/r-*", timeout=30_000)
    run_id = page.url.rsplit("/", 1)[-1]
    run = server.run(run_id)
    assert run["executor"] == "slurm" and run["slurm"]["partition"] == "solo" and run["slurm"]["nodes"] == 1

    page.locator(".run-title .status", has_text="finished").wait_for(timeout=240_000)
    page.goto(server.base_url + "/#/runs")  # the list says where it ran
    page.locator("tr", has_text="from the form").locator("text=CPU · SLURM").wait_for(timeout=30_000)
    page.go_back()
    done = server.run(run_id)
    assert done["status"] == "finished" and done["slurm_job_id"], done
    meta = page.locator(".run-meta").inner_text()
    assert f"SLURM job {done['slurm_job_id']}" in meta and "partition solo" in meta and "nodes n1" in meta
    page.wait_for_function("() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'", timeout=60_000)
    screenshot(page, "slurm-run-finished")
    console.assert_clean()
