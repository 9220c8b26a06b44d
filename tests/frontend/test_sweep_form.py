"""The New run page launches a sweep through the server's POST /api/sweeps, as `cliplab sweep` does: rows of a
setting and its values, a live count and the runs' names (the server's dry run, a moment after each edit), every
config checked by the server before any run is created, the runs queued under one tag, and the page lands on the
runs table of that tag with a column per swept setting."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest
from playwright.sync_api import expect

from contract.sweep import table_link

from tests.backend_fixtures import REPO
from tests.browser_fixtures import (  # noqa: F401
    browser,
    console,
    page,
    screenshot,
    sideways_scroll,
    watched_page,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

GRID_NAMES = ["grid-1 lr=1e-4 batch_size=8", "grid-2 lr=1e-4 batch_size=16", "grid-3 lr=3e-4 batch_size=8",
              "grid-4 lr=3e-4 batch_size=16", "grid-5 lr=1e-3 batch_size=8", "grid-6 lr=1e-3 batch_size=16"]


def open_form(pg: Any, server: Any, name: str) -> None:
    pg.goto(server.base_url + "/#/new")
    pg.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''",
                         timeout=60_000)
    pg.fill("#field-name", name)
    pg.click("#sweep summary")  # opening the fold gives the first row
    pg.locator(".sweep-row").first.wait_for()


def set_row(pg: Any, index: int, key: str, values: str) -> None:
    """Fill the `index`th row (adding it when it is the next one) with a setting and its values."""
    if pg.locator(".sweep-row").count() <= index:
        pg.click("#sweep-add")
    row = pg.locator(".sweep-row").nth(index)
    row.locator("input[list='sweep-keys']").fill(key)
    row.locator("input[id^='sweep-values-']").fill(values)


def preview_names(pg: Any) -> list[str]:
    return pg.locator(".sweep-names li").all_inner_texts()


def expect_count(pg: Any, text: str) -> None:
    """Wait for the server's count of the sweep (asked a moment after each edit)."""
    expect(pg.locator("#sweep-count")).to_have_text(text)


def runs_of(server: Any) -> list[dict[str, Any]]:
    return server.get("/api/runs", params={"limit": 500}).json()["items"]


def test_a_three_by_two_grid_launches_six_queued_runs_and_lands_on_their_table(live_server, page, console):
    live_server.post("/api/runs", json={"name": "not-in-the-sweep", "config": {}}).raise_for_status()
    open_form(page, live_server, "grid")
    keys = page.locator("#sweep-keys option").evaluate_all("os => os.map(o => o.value)")
    assert "optim.lr" in keys and "train.batch_size" in keys and "name" not in keys
    set_row(page, 0, "optim.lr", "1e-4, 3e-4, 1e-3")
    expect_count(page, "3 runs: optim.lr")
    set_row(page, 1, "train.batch_size", "8,16")
    expect_count(page, "6 runs: optim.lr × train.batch_size")
    assert preview_names(page) == GRID_NAMES
    expect(page.locator("#start-run")).to_have_text("Launch 6 runs")
    screenshot(page, "new-run-sweep-grid")

    page.click("#start-run")
    page.wait_for_url(re.compile(r".*#/runs\?tag="))
    tag = parse_qs(page.url.split("#/runs?", 1)[1])["tag"][0]
    assert page.url.split("/", 3)[3] == table_link(tag, ["optim.lr", "train.batch_size"], "val/loss")[1:]
    sweep = [r for r in runs_of(live_server) if tag in r["tags"]]
    assert sorted(r["name"] for r in sweep) == GRID_NAMES
    assert all(r["status"] == "queued" for r in sweep)
    settings = {r["name"]: (r["config"]["optim"]["lr"], r["config"]["train"]["batch_size"]) for r in sweep}
    assert settings == {name: (lr, bs) for name, (lr, bs) in zip(GRID_NAMES, [(1e-4, 8), (1e-4, 16), (3e-4, 8),
                                                                             (3e-4, 16), (1e-3, 8), (1e-3, 16)])}
    # Created in the order of the preview.
    by_age = sorted(sweep, key=lambda r: r["created_at"])
    assert [r["name"] for r in by_age] == GRID_NAMES

    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 6")
    assert sorted(page.locator(".runs-table tbody td.col-name a").all_inner_texts()) == GRID_NAMES
    headers = page.locator(".runs-table thead th.col-extra").evaluate_all("ths => ths.map(th => th.dataset.col)")
    assert headers == ["config:optim.lr", "config:train.batch_size", "best:val/loss"]
    console.assert_clean()


def test_a_value_the_server_refuses_launches_nothing_and_is_named(live_server, page, console):
    open_form(page, live_server, "bad")
    set_row(page, 0, "optim.lr", "1e-4,3e-4")
    set_row(page, 1, "train.batch_size", "8, 0")
    page.click("#start-run")
    refusal = page.locator(".error-box", has_text="Nothing was launched")
    refusal.wait_for()
    assert "train.batch_size=0" in refusal.inner_text() and "bad-2 lr=1e-4 batch_size=0" in refusal.inner_text()
    assert page.evaluate("document.activeElement.id") == page.locator(".sweep-row").nth(1).locator(
        "input[id^='sweep-values-']").get_attribute("id"), "the refused setting's values have the focus"
    assert "#/new" in page.url and live_server.get("/api/runs").json()["total"] == 0

    # A data path outside the server's readable folders: refused before any run is made, the path named.
    set_row(page, 1, "data.train", "demo, /etc/hosts")
    page.click("#start-run")
    page.locator(".error-box", has_text="data.train=/etc/hosts").wait_for()
    assert "#/new" in page.url and live_server.get("/api/runs").json()["total"] == 0
    console.assert_clean()


def test_a_random_sweep_draws_within_its_ranges_and_its_seed_repeats_the_names(live_server, page, console):
    open_form(page, live_server, "rnd")
    set_row(page, 0, "optim.lr", "loguniform(1e-4, 1e-2)")
    set_row(page, 1, "train.batch_size", "randint(4,16)")
    expect(page.locator("#sweep-problem")).to_contain_text("only in a random sweep")
    assert page.inner_text("#start-run") == "Launch sweep"
    page.check("#sweep-random")
    page.fill("#sweep-runs", "5")
    page.fill("#sweep-seed", "7")
    expect_count(page, "5 runs drawn at random: optim.lr × train.batch_size")
    names = preview_names(page)
    assert len(names) == 5 and all(re.fullmatch(r"rnd-\d lr=\S+ batch_size=\d+", n) for n in names), names
    page.fill("#sweep-seed", "8")
    expect(page.locator(".sweep-names li")).not_to_have_text(names)
    page.fill("#sweep-seed", "7")
    expect(page.locator(".sweep-names li")).to_have_text(names)
    # The same sweep from the command line draws the same runs: one implementation, on the server's side.
    cli = subprocess.run([sys.executable, "-m", "trainer", "sweep", "cpu-demo", "--name", "rnd", "--grid",
                          "optim.lr=loguniform(1e-4, 1e-2)", "--grid", "train.batch_size=randint(4,16)", "--random",
                          "5", "--random-seed", "7", "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert [line.strip() for line in cli.stdout.splitlines()[:5]] == names

    page.click("#start-run")
    page.wait_for_url(re.compile(r".*#/runs\?tag="))
    tag = unquote(parse_qs(page.url.split("#/runs?", 1)[1])["tag"][0])
    sweep = [r for r in runs_of(live_server) if tag in r["tags"]]
    assert sorted(r["name"] for r in sweep) == sorted(names)
    for run in sweep:
        lr, batch = run["config"]["optim"]["lr"], run["config"]["train"]["batch_size"]
        assert 1e-4 <= lr <= 1e-2 and isinstance(batch, int) and 4 <= batch <= 16, run
        assert run["name"].endswith(f"batch_size={batch}")
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 5")

    # A fresh page with the same rows and seed previews the same runs.
    page.reload()
    open_form(page, live_server, "rnd")
    set_row(page, 0, "optim.lr", "loguniform(1e-4, 1e-2)")
    set_row(page, 1, "train.batch_size", "randint(4,16)")
    page.check("#sweep-random")
    page.fill("#sweep-runs", "5")
    page.fill("#sweep-seed", "7")
    expect(page.locator(".sweep-names li")).to_have_text(names)
    console.assert_clean()


def test_a_grid_over_the_cap_says_so_and_launches_nothing(live_server, page, console):
    open_form(page, live_server, "huge")
    set_row(page, 0, "optim.lr", ",".join(f"{i}e-4" for i in range(1, 12)))
    set_row(page, 1, "train.batch_size", ",".join(str(8 * i) for i in range(1, 11)))
    expect(page.locator("#sweep-problem")).to_contain_text("110 runs, over the limit of 100")
    assert "draw fewer runs at random" in page.inner_text("#sweep-problem")
    assert preview_names(page) == [] and page.inner_text("#start-run") == "Launch sweep"
    page.click("#start-run")
    assert "#/new" in page.url and live_server.get("/api/runs").json()["total"] == 0

    page.check("#sweep-random")  # sampling it is the way out the message offers
    page.fill("#sweep-runs", "12")
    expect(page.locator("#start-run")).to_have_text("Launch 12 runs")
    assert page.inner_text("#sweep-problem") == ""
    console.assert_clean()


def test_a_launch_that_loses_the_server_says_so_creates_nothing_and_can_be_retried(live_server, page, console):
    # The server creates a sweep's runs in one write, all or none: a launch cut off on its way leaves no
    # half-sweep behind, and launching again creates every run once.
    launches = []

    def first_launch_fails(route: Any) -> None:
        if route.request.method == "POST" and '"dry_run":false' in (route.request.post_data or ""):
            launches.append(route.request.url)
            if len(launches) == 1:
                route.abort("connectionrefused")
                return
        route.continue_()

    page.route("**/api/sweeps", first_launch_fails)
    console.allow("Failed to load resource")
    open_form(page, live_server, "grid")
    set_row(page, 0, "optim.lr", "1e-4, 3e-4, 1e-3")
    set_row(page, 1, "train.batch_size", "8,16")
    expect_count(page, "6 runs: optim.lr × train.batch_size")
    page.click("#start-run")
    box = page.locator(".error-box", has_text="The sweep was not launched")
    box.wait_for()
    assert "Cannot reach the server" in box.inner_text()
    assert "#/new" in page.url and live_server.get("/api/runs").json()["total"] == 0

    page.click("#start-run")
    page.wait_for_url(re.compile(r".*#/runs\?tag="))
    assert sorted(r["name"] for r in runs_of(live_server)) == sorted(GRID_NAMES) and len(launches) == 2
    console.assert_clean()


def test_the_sweep_form_works_by_keyboard_and_fits_a_phone_in_dark_mode(live_server, browser, console):
    with watched_page(browser, console, viewport={"width": 375, "height": 800}) as phone:
        phone.emulate_media(color_scheme="dark")
        phone.goto(live_server.base_url + "/#/new")
        phone.wait_for_function("() => (document.querySelector('#field-train-batch-size')?.value || '') !== ''",
                                timeout=60_000)
        phone.fill("#field-name", "a-rather-long-sweep-name-for-a-phone")
        phone.focus("#sweep summary")
        phone.keyboard.press("Enter")
        phone.locator(".sweep-row").first.wait_for()  # opening the fold gives the first row
        phone.keyboard.press("Tab")
        assert phone.evaluate("document.activeElement.id").startswith("sweep-key-")
        phone.keyboard.type("model.pretrained")
        phone.keyboard.press("Tab")
        phone.keyboard.type("null, /a/very/long/path/to/some/checkpoint/that/goes/on/and/on.pt")
        phone.click("#sweep-add")
        assert phone.evaluate("document.activeElement.id").startswith("sweep-key-"), "a new row takes the focus"
        phone.keyboard.type("optim.lr")
        phone.keyboard.press("Tab")
        phone.keyboard.type("1e-4,3e-4,1e-3")
        expect_count(phone, "6 runs: model.pretrained × optim.lr")
        assert phone.inner_text("#start-run") == "Launch 6 runs"
        unlabelled = phone.evaluate("""() => [...document.querySelectorAll('form input, form select, form textarea')]
            .filter((el) => !(el.labels && el.labels.length)).map((el) => el.id || el.outerHTML.slice(0, 60))""")
        assert unlabelled == [], f"form controls without a label: {unlabelled}"
        assert sideways_scroll(phone) == 0
        background = phone.eval_on_selector(".sweep-names", "el => getComputedStyle(el).backgroundColor")
        assert sum(int(c) for c in re.findall(r"\d+", background)[:3]) < 150, f"not dark: {background}"
        phone.locator("#sweep").scroll_into_view_if_needed()
        screenshot(phone, "new-run-sweep-phone-dark")
    console.assert_clean()
