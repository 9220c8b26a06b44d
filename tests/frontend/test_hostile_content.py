"""Hostile and unusual user text in the dashboard, and its keyboard and screen-reader use.

Runs are registered through the public attach API (`POST /api/runs/attach`) and their events posted with the
run's token, as `cliplab sync` does, so nothing trains. Their names, tags, notes, metric names, log messages,
captions and failure reasons hold markup, very long words, right-to-left text, emoji, combining and zero-width
characters, newlines and tabs; their values NaN-like nulls, 1e308, -0, 1e-300 and a step of 2^48. Nothing may
run, break a page's script or widen a page.
Run: python -m pytest -q tests/frontend/test_hostile_content.py
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from tests.backend_fixtures import AppServer, served_app
from tests.browser_fixtures import browser, console, page, sideways_scroll  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

XSS = "<img src=x onerror=\"window.__pwned=1\">"
SCRIPT = "</script><script>window.__pwned=2</script>"
LONG_WORD = "w" * 190  # no place to break
RTL = "دقة التحقق"  # "validation accuracy"
ODD = ["\"quotes' &amp;", "👩‍👩‍👧‍👦 é\u0301\u0301 z\u200bw\u200dj\ufeff", "new\nline\ttab", "%{y} %{meta}"]
HOSTILE = [XSS, SCRIPT, LONG_WORD, RTL, *ODD]


def attach(server: AppServer, name: str, tags: list[str], notes: str, events: list[dict[str, Any]]) -> str:
    """A run uploaded as `cliplab sync` would: registered, given notes, then its events."""
    config = {"name": name, "tags": tags, "train": {"steps": 10}}
    r = server.client.post("/api/runs/attach", json={"config": config, "run_dir": "/elsewhere/hostile",
                                                      "host": "laptop", "live": False})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["token"]
    assert server.client.patch(f"/api/runs/{run_id}", json={"notes": notes}).status_code == 200
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return run_id


def hostile_events(label: str, reason: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []

    def add(kind: str, **body: Any) -> None:
        events.append({"seq": len(events) + 1, "time": time.time() - 600 + len(events), "kind": kind, **body})

    add("status", status="running", step=0)
    for step in range(1, 6):
        add("metric", step=step, total_steps=10, values={
            "loss": 1.0 / step, label: float(step), RTL: 0.5, "a/b/c/d": 1.0, "constant": 3.0, "all_null": None,
            "huge": 1e308, "negative_zero": -0.0, "tiny": 1e-300, "loss,smoothed": 2.0 / step})
    add("metric", step=2 ** 48, values={"far_step": 1.0})
    add("eval", step=5, values={f"val/{label[:150]}": 0.5})
    for text in HOSTILE:
        add("log", level="warning", message=text)
    add("matrix", step=5, captions=HOSTILE, thumbnails=[], logit_scale=10.0,
        similarity=[[0.9 if i == j else 0.1 for j in range(len(HOSTILE))] for i in range(len(HOSTILE))])
    add("data_warning", step=5, skipped=1, total_skipped=1, examples=[{"path": XSS, "reason": SCRIPT}])
    add("status", status="failed", reason=reason, step=5)
    return events


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A served app with one run per hostile string (name, tags, notes, a metric and its failure reason) and a
    plain one to compare with."""
    with served_app(tmp_path_factory.mktemp("hostile-dashboard")) as server:
        notes = "\n".join(HOSTILE)
        runs = {}
        for i, text in enumerate(HOSTILE):
            tags = [t[:64] for t in HOSTILE if "\n" not in t][:4]
            runs[text] = attach(server, text[:200], tags, notes, hostile_events(text[:190] or f"m{i}", text))
        runs["plain"] = attach(server, "plain", ["sweep"], "", hostile_events("plain_metric", "out of memory"))
        yield {"server": server, "base": server.base_url, "runs": runs}



def nothing_ran(page: Any) -> None:
    assert page.evaluate("window.__pwned") is None, "user text ran as script"
    assert page.locator("#app img[src='x']").count() == 0, "user text became markup"


def test_run_page_with_long_words_in_reason_metric_names_and_captions_does_not_widen_the_page(hostile, page, console):
    page.goto(f"{hostile['base']}/#/runs/{hostile['runs'][LONG_WORD]}")
    page.wait_for_selector(".matrix-captions li")
    page.wait_for_selector(".state-box .error-box")
    page.wait_for_function("() => document.querySelectorAll('.chart-card .main-svg').length > 2")
    nothing_ran(page)
    assert sideways_scroll(page) <= 0, [
        el for el in page.evaluate("""() => [...document.querySelectorAll('.error-box, .chart-card h3, .matrix-captions li')]
            .filter((el) => el.scrollWidth > el.clientWidth + 1).map((el) => el.className || el.tagName)""")]
    console.assert_clean()


def test_compare_page_chart_titles_with_long_metric_names_stay_in_their_cards(hostile, page, console):
    ids = ",".join(hostile["runs"][k] for k in (LONG_WORD, XSS, "plain"))
    page.goto(f"{hostile['base']}/#/compare?ids={ids}")
    page.wait_for_selector(".diff-table")
    page.wait_for_function("() => document.querySelectorAll('.chart-card .main-svg').length > 2")
    nothing_ran(page)
    assert sideways_scroll(page) <= 0
    wide = page.evaluate("""() => [...document.querySelectorAll('.chart-card')]
        .filter((c) => c.scrollWidth > c.clientWidth + 1).map((c) => c.dataset.chart)""")
    assert wide == []
    console.assert_clean()


def test_runs_table_cuts_a_metric_name_that_is_one_long_word_instead_of_widening_its_columns(hostile, page, console):
    page.goto(f"{hostile['base']}/#/runs")
    page.wait_for_selector(f"tr[data-run-id='{hostile['runs'][LONG_WORD]}']")
    nothing_ran(page)
    widths = page.evaluate("""() => Object.fromEntries(['latest', 'best'].map((c) =>
        [c, document.querySelector(`.runs-table thead th.col-${c}`).getBoundingClientRect().width]))""")
    assert max(widths.values()) <= 300, f"a long metric name widened the Latest/Best columns: {widths}"
    # The whole name is still one hover away.
    metric = page.locator(f"tr[data-run-id='{hostile['runs'][LONG_WORD]}'] td.col-latest .metric").nth(1)
    assert LONG_WORD in metric.get_attribute("title")
    console.assert_clean()


def test_a_right_to_left_metric_name_keeps_its_value_after_it(hostile, page, console):
    page.goto(f"{hostile['base']}/#/runs")
    row = f"tr[data-run-id='{hostile['runs'][RTL]}'] td.col-latest"
    page.wait_for_selector(row)
    # The RTL run's second headline metric is its RTL-named one; its value (a text node) must sit to its right.
    where = page.evaluate(f"""() => {{
        const metric = [...document.querySelectorAll("{row} .metric")].find((m) => m.querySelector('.k').textContent === {RTL!r});
        const key = metric.querySelector('.k').getBoundingClientRect();
        const range = document.createRange();
        range.selectNodeContents(metric.lastChild);
        const value = range.getBoundingClientRect();
        return {{keyLeft: key.left, keyRight: key.right, valueLeft: value.left, text: metric.lastChild.textContent}};
    }}""")
    assert where["text"].strip() == "0.5", where
    assert where["valueLeft"] >= where["keyRight"] - 1, where
    console.assert_clean()


def test_notes_editor_returns_focus_to_its_button_after_cancel_or_save(hostile, page, console):
    page.goto(f"{hostile['base']}/#/runs/{hostile['runs'][XSS]}")
    page.wait_for_selector("#edit-run-meta")
    nothing_ran(page)
    page.focus("#edit-run-meta")
    page.keyboard.press("Enter")
    page.wait_for_selector("#edit-notes")
    assert page.evaluate("document.activeElement.id") == "edit-notes"
    assert page.input_value("#edit-name") == XSS
    page.focus("#cancel-run-meta")
    page.keyboard.press("Enter")
    page.wait_for_selector("#edit-notes", state="detached")
    assert page.evaluate("document.activeElement.id") == "edit-run-meta"
    page.keyboard.press("Space")
    page.wait_for_selector("#edit-notes")
    page.fill("#edit-notes", "checked by keyboard\n" + SCRIPT)
    page.focus("#save-run-meta")
    page.keyboard.press("Enter")
    page.wait_for_selector("#edit-notes", state="detached")
    assert page.evaluate("document.activeElement.id") == "edit-run-meta"
    assert SCRIPT in page.locator(".run-notes").text_content()
    nothing_ran(page)
    console.assert_clean()


def test_config_differences_are_said_in_words_not_only_highlighted(hostile, page, console):
    ids = ",".join(hostile["runs"][k] for k in (XSS, "plain"))
    page.goto(f"{hostile['base']}/#/compare?ids={ids}")
    page.wait_for_selector("#only-diff")
    page.uncheck("#only-diff")
    rows = page.evaluate("""() => [...document.querySelectorAll('.diff-table tbody tr')].map((tr) =>
        ({differs: tr.classList.contains('differs'), key: tr.querySelector('th').textContent}))""")
    assert any(r["differs"] for r in rows) and any(not r["differs"] for r in rows), rows
    # What a screen reader hears for each row's key (the accessible name, which counts CSS-generated text).
    for r in rows:
        name = page.get_by_role("rowheader", name=r["key"]).first.aria_snapshot()
        assert ("differs" in name) == r["differs"], (r, name)
    console.assert_clean()


def test_a_metric_name_with_a_comma_is_charted(hostile, page, console):
    page.goto(f"{hostile['base']}/#/runs/{hostile['runs']['plain']}")
    card = page.locator(".chart-card", has=page.locator("h3", has_text="loss,smoothed"))
    card.locator(".main-svg").first.wait_for()
    page.wait_for_function("(card) => card.querySelectorAll('.scatterlayer path.js-line').length > 0",
                           arg=card.element_handle())
    assert "no points yet" not in card.inner_text()
    console.assert_clean()
