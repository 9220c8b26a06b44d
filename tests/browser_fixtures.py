"""Playwright fixtures for the dashboard tests: Debian's chromium (never a downloaded browser), pages that
record console errors, and screenshots saved to test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 900}


class ConsoleLog:
    """Console errors and uncaught exceptions of one page; `allow` takes substrings of expected ones."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.allowed: list[str] = []

    def on_console(self, msg: Any) -> None:
        if msg.type == "error":
            where = (msg.location or {}).get("url", "")
            self.errors.append(f"{msg.text} [{where}]")

    def on_page_error(self, err: Any) -> None:
        self.errors.append(f"uncaught: {err}")

    def allow(self, substring: str) -> None:
        self.allowed.append(substring)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(a in e for a in self.allowed)]

    def assert_clean(self) -> None:
        bad = self.unexpected()
        assert not bad, "console errors on the page:\n" + "\n".join(bad)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
        if os.environ.get("CLIPLAB_REQUIRE_BROWSER"):
            pytest.fail(f"{CHROMIUM} is missing and CLIPLAB_REQUIRE_BROWSER is set: apt-get install chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def console() -> ConsoleLog:
    return ConsoleLog()


@pytest.fixture
def page(browser: Any, console: ConsoleLog) -> Iterator[Any]:
    with watched_page(browser, console) as pg:
        yield pg


@contextmanager
def watched_page(browser: Any, console: ConsoleLog, viewport: dict[str, int] = VIEWPORT) -> Iterator[Any]:
    """A page in a context of its own (fresh storage, e.g. a phone's viewport) whose console errors `console`
    records; the context closes on exit."""
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.on("console", console.on_console)
    pg.on("pageerror", console.on_page_error)
    try:
        yield pg
    finally:
        context.close()


def screenshot(page: Any, name: str, selector: str | None = None) -> Path:
    """Save a full-page (or one element's) PNG under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    if selector:
        page.locator(selector).screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=True)
    return path


def sideways_scroll(page: Any) -> int:
    """How many pixels wider than the window the page is (> 0: it scrolls sideways)."""
    return page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")


def wait_run_page_loaded(page: Any) -> None:
    """Wait until the run page has every section's first answer (it marks #app aria-busy until then), so a test
    that then deletes or changes the run does not race the page's own first requests."""
    page.locator("#app .run-title").wait_for()
    page.locator("#app:not([aria-busy])").wait_for(state="attached")
