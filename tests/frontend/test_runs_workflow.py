"""What a W&B user expects of the runs list and a run page: actions on the selected runs (delete, stop, tag,
untag) that report the runs they could not change, filters kept in a shareable URL, long names cut to two
lines, charts in folding sections by metric prefix with a filter box, and Clone straight to the form.

Runs are registered through the public API (`POST /api/runs` on a server that launches nothing, or
`POST /api/runs/attach` and their events), so nothing trains.
Run: python -m pytest -q tests/frontend/test_runs_workflow.py
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import pytest

from tests.backend_fixtures import LiveServer, wait_until
from tests.browser_fixtures import browser, console, page, screenshot, sideways_scroll, watched_page  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PHONE = {"width": 390, "height": 800}


def attach(server: LiveServer, name: str, tags: list[str] | None = None, *, live: bool = False,
           metrics: list[str] = ("loss",), steps: int = 12, end: dict[str, Any] | None = None) -> str:
    """A run registered as `cliplab train --server` or `cliplab sync` would. `live`: a trainer is (said to be)
    running it now, so it stays `starting`; else its events are uploaded: `metrics` logged every step, then
    the `end` status event (finished by default)."""
    config = {"name": name, "tags": tags or [], "train": {"steps": steps}}
    r = server.client.post("/api/runs/attach", json={"config": config, "run_dir": f"/elsewhere/{name[:40].strip()}",
                                                      "host": "laptop-7", "live": live})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["token"]
    if live:
        return run_id
    t0, events = time.time() - 600, []

    def add(kind: str, step: int, **body: Any) -> None:
        events.append({"seq": len(events) + 1, "time": t0 + 3 * step, "kind": kind, "step": step,
                       "total_steps": steps, **body})

    add("status", 0, status="running")
    for step in range(1, steps + 1):
        add("metric", step, values={m: 1 + i + math.exp(-step / 5) for i, m in enumerate(metrics)})
    add("status", steps, **(end or {"status": "finished", "reason": None}))
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return run_id


def queued(server: LiveServer, name: str, tags: list[str] | None = None) -> str:
    """A run made by the new-run API; this server launches nothing, so it waits `queued`."""
    r = server.post("/api/runs", json={"name": name, "config": {"train": {"steps": 5}}, "tags": tags or []})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def row(page: Any, run_id: str) -> Any:
    return page.locator(f'.runs-table tr[data-run-id="{run_id}"]')


def select(page: Any, *run_ids: str) -> None:
    for run_id in run_ids:
        row(page, run_id).locator("input.select-run").check()


def dialog(page: Any) -> Any:
    d = page.locator("dialog.confirm[open]")
    d.wait_for()
    return d


def shown_names(page: Any) -> list[str]:
    return page.locator(".runs-table tbody td.col-name a").all_inner_texts()



# ---- 1: actions on the selected runs ----------------------------------------------------------------------


def test_selected_runs_are_tagged_untagged_stopped_and_deleted_with_failures_named(live_server, page, console):
    server = live_server
    q1, q2 = queued(server, "queued-one", ["sweep"]), queued(server, "queued-two", ["sweep"])
    live = attach(server, "live-one", ["sweep"], live=True)
    done = attach(server, "done-one", ["sweep"])
    full = attach(server, "full-tags", [f"t{i}" for i in range(32)])  # the most tags a run may have
    page.goto(f"{server.base_url}/#/runs")
    row(page, full).wait_for()
    bar = page.locator(".bulk-bar")
    assert bar.is_hidden(), "no actions before anything is selected"

    # Add a tag to three runs, one of which cannot take another: the other two get it, the third is named.
    select(page, q1, done, full)
    assert bar.locator(".bulk-count").inner_text() == "3 selected"
    page.click("#bulk-add-tag")
    d = dialog(page)
    assert "Add a tag to 3 runs" in d.inner_text()
    page.fill("#bulk-tag", "best")
    page.keyboard.press("Enter")
    failed = page.locator(".bulk-failed")
    failed.wait_for()
    text = failed.inner_text()
    assert "1 of 3 runs could not be tagged “best”" in text and "full-tags: tags" in text and "32" in text, text
    assert "The other 2 runs were tagged" in text
    assert "best" in server.run(q1)["tags"] and "best" in server.run(done)["tags"]
    assert "best" not in server.run(full)["tags"]
    row(page, q1).locator(".tag", has_text="best").wait_for()  # the table shows it at once
    screenshot(page, "runs-bulk-tag-failure")

    # Remove a tag: the dialog says how many of the selected runs have it.
    page.click("#bulk-clear")
    assert bar.is_hidden()
    select(page, q1, q2, full)
    page.click("#bulk-remove-tag")
    d = dialog(page)
    page.select_option("#bulk-untag", "sweep")
    assert "Removes “sweep” from 2 of the 3 selected runs." in d.inner_text()
    d.get_by_role("button", name="Remove tag").click()
    page.locator(".bulk-done", has_text="2 runs untagged “sweep”").wait_for()
    assert server.run(q1)["tags"] == ["best"] and server.run(q2)["tags"] == []

    # Stop: only the runs that can stop count; one stopped elsewhere while the dialog was open fails by name.
    page.click("#bulk-clear")
    select(page, q1, q2, live, done)
    assert page.inner_text("#bulk-stop") == "Stop (3)"
    page.click("#bulk-stop")
    d = dialog(page)
    assert "Stop 3 runs?" in d.inner_text() and "1 other selected run: not live" in d.inner_text()
    assert server.post(f"/api/runs/{q2}/stop").json()["status"] == "stopped"
    d.get_by_role("button", name="Stop 3 runs").click()
    failed.wait_for()
    text = failed.inner_text()
    assert "1 of 3 runs could not be stopped:" in text and "queued-two" in text and "already stopped" in text, text
    assert server.run(q1)["status"] == "stopped" and server.run(live)["status"] == "stopping"
    assert server.run(done)["status"] == "finished"

    # Delete: an active run is left alone (the dialog says so); deleted runs leave the table and the selection.
    page.click("#bulk-clear")
    select(page, q1, q2, live, done)
    page.wait_for_function("() => document.querySelector('#bulk-delete').textContent === 'Delete (3)'")
    page.click("#bulk-delete")
    d = dialog(page)
    assert "Delete 3 runs?" in d.inner_text() and "1 other selected run: still active" in d.inner_text()
    assert page.evaluate("document.activeElement.textContent") == "Cancel", "a stray Enter deletes nothing"
    d.get_by_role("button", name="Delete 3 runs").click()
    page.locator(".bulk-done", has_text="3 runs deleted").wait_for()
    for run_id in (q1, q2, done):
        row(page, run_id).wait_for(state="detached")
        assert server.get(f"/api/runs/{run_id}").status_code == 404
    assert bar.locator(".bulk-count").inner_text() == "1 selected", "only the run still there stays selected"
    assert page.evaluate("document.activeElement.textContent") == "Dismiss", "focus is not lost with the Delete button"
    assert row(page, live).locator("input.select-run").is_checked()
    console.allow("409 (Conflict)")  # the browser logs the refused requests itself
    console.allow("422 (Unprocessable")
    console.assert_clean()


def test_bulk_actions_fit_a_phone_and_work_from_the_keyboard(live_server, browser, console):
    server = live_server
    ids = [queued(server, f"phone-run-{i}") for i in range(3)]
    with watched_page(browser, console, PHONE) as page:
        page.goto(f"{server.base_url}/#/runs")
        row(page, ids[2]).wait_for()
        page.locator('th.col-check input[type="checkbox"]').check()  # select all shown
        page.locator(".bulk-bar").wait_for()
        assert sideways_scroll(page) <= 0
        screenshot(page, "runs-bulk-phone")
        page.focus("#bulk-add-tag")
        page.keyboard.press("Enter")
        dialog(page)
        page.keyboard.type("phone")
        page.keyboard.press("Enter")
        page.locator(".bulk-done", has_text="3 runs tagged “phone”").wait_for()
        assert all(server.run(i)["tags"] == ["phone"] for i in ids)
    console.assert_clean()


# ---- 2: filters in the URL ----------------------------------------------------------------------------------


def test_status_name_and_tag_filters_survive_a_reload_and_open_from_a_shared_link(live_server, browser, page, console):
    server = live_server
    attach(server, "alpha-good", ["keep"])
    attach(server, "alpha-broken", ["keep"], end={"status": "failed", "reason": "out of memory"})
    attach(server, "beta-broken", ["other"], end={"status": "failed", "reason": "nan loss"})
    page.goto(f"{server.base_url}/#/runs")
    page.locator(".runs-table tbody tr").nth(2).wait_for()
    page.select_option("#filter-status", "failed")
    page.fill("#filter-name", "alpha")
    page.fill("#filter-tag", "keep")
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 1")
    url = page.url
    assert "status=failed" in url and "name=alpha" in url and "tag=keep" in url, url

    page.reload()
    page.locator(".runs-table tbody tr").first.wait_for()
    assert shown_names(page) == ["alpha-broken"]
    assert page.input_value("#filter-status") == "failed" and page.input_value("#filter-name") == "alpha"
    assert page.input_value("#filter-tag") == "keep"

    # The link in another browser (no local storage, no session state) shows the same.
    other = browser.new_context()
    try:
        shared = other.new_page()
        shared.goto(f"{server.base_url}/#/runs?status=failed&name=broken")
        shared.locator(".runs-table tbody tr").nth(1).wait_for()
        assert sorted(shown_names(shared)) == ["alpha-broken", "beta-broken"]
        assert shared.input_value("#filter-status") == "failed" and shared.input_value("#filter-tag") == ""
        shared.goto(f"{server.base_url}/#/runs?status=bogus")  # a mistyped status filters nothing out
        shared.reload()
        shared.locator(".runs-table tbody tr").nth(2).wait_for()
        assert shared.input_value("#filter-status") == ""
    finally:
        other.close()

    # Clearing the filters takes them out of the URL.
    page.select_option("#filter-status", "")
    page.fill("#filter-name", "")
    page.fill("#filter-tag", "")
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 3")
    assert not re.search(r"[?&](status|name|tag)=", page.url), page.url
    console.assert_clean()


# ---- 3: long names ------------------------------------------------------------------------------------------


LONG_WORDS = ("a sweep over learning rates and batch sizes with warmup " * 4)[:200]  # names: 200 at most
LONG_TOKEN = "run-" + "x" * 190
LONG_REASON = "the trainer ran out of memory while " + "allocating a very large buffer " * 12


def name_cell_metrics(page: Any, run_id: str) -> dict[str, Any]:
    return row(page, run_id).evaluate("""(tr) => { const a = tr.querySelector('td.col-name a');
        const reason = tr.querySelector('.row-reason');
        return {row: tr.getBoundingClientRect().height, cut: a.scrollHeight > a.clientHeight + 1,
                // in font sizes: two lines at the normal line height are ~2.4, three ~3.6
                ems: a.getBoundingClientRect().height / parseFloat(getComputedStyle(a).fontSize),
                title: a.title, td: tr.querySelector('td.col-name').getBoundingClientRect().width,
                reasonTitle: reason?.title, reasonCut: reason ? reason.scrollHeight > reason.clientHeight + 1 : null,
                reasonWidth: reason?.getBoundingClientRect().width}; }""")


def test_long_names_take_two_lines_with_the_full_name_on_hover_and_a_reason_never_widens_the_column(
        live_server, browser, page, console):
    server = live_server
    words = attach(server, LONG_WORDS.strip())
    token = attach(server, LONG_TOKEN)
    failed = attach(server, "oom", end={"status": "failed", "reason": LONG_REASON})
    short = attach(server, "short")
    page.goto(f"{server.base_url}/#/runs")
    row(page, failed).wait_for()
    for run_id, full in ((words, LONG_WORDS.strip()), (token, LONG_TOKEN)):
        m = name_cell_metrics(page, run_id)
        assert m["cut"] and 2 < m["ems"] < 3 and m["title"] == full, m
        assert m["row"] < 90, f"a long name made a {m['row']}px row"
    m = name_cell_metrics(page, failed)
    assert m["reasonTitle"] == LONG_REASON and m["reasonCut"], m
    assert m["reasonWidth"] <= m["td"], m
    screenshot(page, "runs-long-names")

    # The reason alone does not widen the Name column: with only short names it stays narrow.
    page.fill("#filter-name", "oom")
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 1")
    narrow = name_cell_metrics(page, failed)
    assert narrow["td"] < 200, f"the reason widened the Name column to {narrow['td']}px"
    assert sideways_scroll(page) <= 0

    with watched_page(browser, console, PHONE) as phone:
        phone.goto(f"{server.base_url}/#/runs")
        row(phone, failed).wait_for()
        assert sideways_scroll(phone) <= 0
        plain = name_cell_metrics(phone, short)["row"]
        for run_id in (words, token):
            m = name_cell_metrics(phone, run_id)
            assert m["ems"] < 3 and m["row"] < plain + 30, (m, plain)  # one more line than a short name's card
        screenshot(phone, "runs-long-names-phone")
    console.assert_clean()


# ---- 4: many metrics -----------------------------------------------------------------------------------------


EXTRA = [f"extra/m{i:02d}" for i in range(48)]
VAL = ["val/acc", *[f"val/probe_{i}" for i in range(6)]]
TOP = ["loss", "lr", "grad_norm", "custom_a", "custom_b"]


def drawn(page: Any, chart: str) -> bool:
    return page.evaluate(f"() => !!document.querySelector('[data-chart=\"{chart}\"] .plot')?.data")


def series_requests(page: Any, needle: str) -> int:
    return page.evaluate("""(needle) => performance.getEntriesByType('resource')
        .filter((e) => e.name.includes('/series') && decodeURIComponent(e.name).includes(needle)).length""", needle)


def test_many_metrics_group_into_folding_sections_drawn_only_when_open_and_a_filter_finds_charts(
        live_server, page, console):
    server = live_server
    run_id = attach(server, "wide", metrics=[*TOP, *VAL, *EXTRA])
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    page.wait_for_function("() => document.querySelector('[data-chart=\"loss\"] .plot')?.data")
    sections = page.evaluate("""() => [...document.querySelectorAll('#charts .chart-section')].map((s) =>
        [s.dataset.section, s.open, s.querySelector('summary').textContent])""")
    assert [s[0] for s in sections] == ["", "val", "extra"], sections
    assert sections[0][1] and not sections[1][1] and not sections[2][1], "a long list opens its first section only"
    assert sections[2][2] == "extra48 charts" and sections[0][2].startswith("Charts")
    # Folded charts are neither drawn nor fetched.
    page.wait_for_timeout(500)
    assert not drawn(page, "metric:extra/m00") and series_requests(page, "extra/") == 0
    screenshot(page, "run-page-chart-sections-folded", "#charts")

    # Opening a section draws its charts; the choice is remembered for the next run page.
    page.locator('.chart-section[data-section="extra"] > summary').click()
    page.wait_for_function("() => document.querySelector('[data-chart=\"metric:extra/m47\"] .plot')?.data")
    assert page.evaluate("JSON.parse(localStorage.getItem('cliplab.chartSections')).extra") is True

    # The filter hides the charts whose metric does not match, counts the rest, hides empty sections.
    page.fill("#chart-filter", "m0")
    page.wait_for_function("() => document.querySelector('.chart-section[data-section=\"\"]').hidden")
    assert page.locator('.chart-section[data-section="extra"] .count').inner_text() == "10 of 48 charts"
    assert page.locator('[data-chart="metric:extra/m10"]').is_hidden()
    assert page.locator('[data-chart="metric:extra/m05"]').is_visible()
    page.fill("#chart-filter", "probe_3")
    val = page.locator('.chart-section[data-section="val"]')
    assert val.locator(".count").inner_text() == "1 of 7 charts"
    assert page.locator('.chart-section[data-section="extra"]').is_hidden()
    assert not drawn(page, "metric:val/probe_3"), "a match in a folded section waits for it to open"
    val.locator("summary").focus()
    page.keyboard.press("Enter")  # a section opens from the keyboard
    page.wait_for_function("() => document.querySelector('[data-chart=\"metric:val/probe_3\"] .plot')?.data")
    assert series_requests(page, "val/probe_2") == 0, "a chart the filter hides is not fetched"
    page.fill("#chart-filter", "no-such-metric")
    page.locator("#charts .empty", has_text="no-such-metric").wait_for()
    screenshot(page, "run-page-chart-sections")
    # Charts drawn at one width, hidden while the window narrows, fit the new width when they show again.
    page.set_viewport_size(PHONE)
    page.fill("#chart-filter", "")
    page.wait_for_function("() => document.querySelector('[data-chart=\"metric:val/probe_2\"] .plot')?.data")
    page.wait_for_function("() => document.documentElement.scrollWidth <= document.documentElement.clientWidth",
                           timeout=15_000)
    widths = page.evaluate("""() => [...document.querySelectorAll('#charts .chart-card:not([hidden]) .main-svg')]
        .map((svg) => svg.getBoundingClientRect().width)""")
    assert widths and max(widths) <= PHONE["width"], widths
    screenshot(page, "run-page-chart-sections-phone", "#charts .chart-controls")
    console.assert_clean()


# ---- 5: clone ---------------------------------------------------------------------------------------------------


def test_clone_opens_the_form_at_once_with_the_runs_config_and_its_current_tags(live_server, page, console):
    server = live_server
    run_id = queued(server, "tagged-later", ["first"])
    r = server.client.patch(f"/api/runs/{run_id}", json={"tags": ["renamed", "kept"]})
    assert r.status_code == 200, r.text
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    page.click("#clone-run")
    page.wait_for_url(re.compile(r".*#/new\?clone="))
    page.wait_for_function("() => document.querySelector('#field-name')?.value === 'tagged-later-clone'")
    assert page.locator("dialog").count() == 0, "cloning changes nothing: no confirmation"
    assert page.input_value("#field-tags") == "renamed, kept"
    assert page.input_value("#field-train-steps") == "5"
    wait_until(lambda: "renamed" in page.input_value("#config-yaml"), 5, what="the tags in the YAML too")
    console.assert_clean()
