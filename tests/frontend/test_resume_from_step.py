"""The run page's Checkpoints card: "Resume from here" on a complete step resumes the run from that step (a rewind),
through the same confirmation as Resume (Train longer's step count for a finished run). The app runs in-process
and launches nothing, so a resumed run stays queued with the chosen checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend import store
from backend.models import Run

from tests.backend.test_attach_api import attach
from tests.browser_fixtures import browser, console, page, screenshot, wait_run_page_loaded  # noqa: F401 - fixtures


def _ended(server: Any, run: dict[str, Any], steps: tuple[int, ...], status: str) -> dict[str, Any]:
    """`run` ended `status` at its last step, with a complete step directory per step and a wise_ft folder."""
    checkpoints = Path(run["run_dir"]) / "checkpoints"
    for step in steps:
        (checkpoints / f"step_{step:06d}").mkdir(parents=True)
        (checkpoints / f"step_{step:06d}" / "train_state.pt").write_bytes(b"state")
    (checkpoints / "wise_ft").mkdir()
    (checkpoints / "wise_ft" / "model.safetensors").write_bytes(b"w")
    (checkpoints / "latest").write_text(f"step_{steps[-1]:06d}\n")

    def end(session: Any) -> None:
        row = session.get(Run, run["id"])
        row.status, row.step, row.total_steps, row.started_at, row.finished_at = status, steps[-1], 20, 1000.0, 1100.0
        session.add(row)

    server.services.writer.call(end)
    return run


def _new_run(server: Any, name: str) -> dict[str, Any]:
    return server.client.post("/api/runs", json={"name": name, "config": {"train": {"steps": 20}}}).json()


def _resume_here(page: Any, step_dir: str) -> Any:
    return page.locator("#checkpoints").get_by_role("button", name=f"Resume from here {step_dir}")


def test_resume_from_here_on_an_older_step_queues_the_run_from_it_and_resume_keeps_latest(app_server, page, console):
    run = _ended(app_server, _new_run(app_server, "spiky"), (4, 8, 12), "stopped")
    page.goto(f"{app_server.base_url}/#/runs/{run['id']}")
    wait_run_page_loaded(page)
    _resume_here(page, "step_000012").wait_for()
    assert page.locator("#checkpoints").get_by_role("button", name="Resume from here").count() == 3  # not wise_ft

    _resume_here(page, "step_000004").click()
    dialog = page.locator("dialog.confirm[open]")
    assert "from step 4" in dialog.locator("h2").inner_text()
    assert "newer checkpoints (step_000008, step_000012) are abandoned" in dialog.inner_text()
    screenshot(page, "resume-from-here-dialog")
    dialog.get_by_role("button", name="Resume").click()
    page.locator(".info-box", has_text="It resumes from step_000004.").wait_for()
    resumed = app_server.client.get(f"/api/runs/{run['id']}").json()
    assert resumed["status"] == "queued" and resumed["resume_from"] == "step_000004"
    assert app_server.services.read(store.get_run, run["id"]).resume
    _resume_here(page, "step_000004").wait_for(state="detached")  # only a run that ended offers it

    # Stopped while queued, the page's own Resume goes on from latest again.
    assert app_server.client.post(f"/api/runs/{run['id']}/stop").json()["status"] == "stopped"
    page.click("#resume-run")
    page.locator("dialog.confirm[open]").get_by_role("button", name="Resume").click()
    page.locator(".info-box", has_text="Queued").wait_for()
    assert app_server.client.get(f"/api/runs/{run['id']}").json()["resume_from"] is None
    assert "resumes from" not in page.locator(".info-box").inner_text()
    console.assert_clean()


def test_resume_from_here_on_a_finished_run_asks_how_far_to_train_from_that_step(app_server, page, console):
    run = _ended(app_server, _new_run(app_server, "done"), (10, 20), "finished")
    page.goto(f"{app_server.base_url}/#/runs/{run['id']}")
    wait_run_page_loaded(page)
    _resume_here(page, "step_000010").click()
    number = page.locator("dialog.confirm[open] #dialog-number")
    assert number.input_value() == "20"  # its own steps, now from step 10
    number.press("Enter")
    page.locator(".info-box", has_text="It resumes from step_000010.").wait_for()
    resumed = app_server.client.get(f"/api/runs/{run['id']}").json()
    assert resumed["resume_from"] == "step_000010" and resumed["config"]["train"]["steps"] == 20
    console.assert_clean()


def test_an_attached_runs_checkpoints_show_the_command_that_resumes_from_them(app_server, page, console):
    run_dir = app_server.settings.data_dir / "by-hand" / "run-a"  # readable: its checkpoints are listed
    registered = attach(app_server, run_dir=str(run_dir)).json()["run"]
    _ended(app_server, registered, (4, 8), "stopped")
    page.goto(f"{app_server.base_url}/#/runs/{registered['id']}")
    wait_run_page_loaded(page)
    summary = page.locator("#checkpoints summary", has_text="Resume from here").first
    summary.wait_for()
    assert page.locator("#checkpoints").get_by_role("button", name="Resume from here").count() == 0
    summary.click()
    command = page.locator("#checkpoints details[open] code").inner_text()
    assert command.startswith(f"cliplab train --resume {run_dir}/checkpoints/step_000004 --run-dir {run_dir}")
    console.assert_clean()


def test_a_rewind_can_go_on_with_a_lower_learning_rate_and_a_bad_one_is_named(app_server, page, console):
    run = _ended(app_server, _new_run(app_server, "spike"), (4, 8), "failed")
    page.goto(f"{app_server.base_url}/#/runs/{run['id']}")
    wait_run_page_loaded(page)
    _resume_here(page, "step_000004").click()
    lr = page.locator("dialog.confirm[open] #dialog-lr")
    assert float(lr.input_value()) == run["config"]["optim"]["lr"]  # the run's own, as the starting point
    lr.fill("a lot lower")
    lr.press("Enter")
    error = page.locator("dialog.confirm[open] #dialog-lr-error")
    error.wait_for()
    assert "must be a number above 0" in error.inner_text() and lr.get_attribute("aria-invalid") == "true"
    assert app_server.client.get(f"/api/runs/{run['id']}").json()["status"] == "failed"  # nothing sent yet
    lr.fill("1e-5")
    page.locator("dialog.confirm[open]").get_by_role("button", name="Resume").click()
    page.locator(".info-box", has_text="It resumes from step_000004.").wait_for()
    resumed = app_server.client.get(f"/api/runs/{run['id']}").json()
    assert resumed["resume_from"] == "step_000004" and resumed["config"]["optim"]["lr"] == 1e-5
    assert resumed["config"]["train"]["steps"] == 20  # only what was changed is overridden
    console.assert_clean()
