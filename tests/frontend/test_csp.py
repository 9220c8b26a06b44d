"""The dashboard under its Content-Security-Policy, in Debian's chromium against the real server: every page
and chart works with no CSP violation in the console, and no other site can frame it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser_fixtures import browser, console, page  # noqa: F401 - fixtures
from tests.frontend.test_pages import running_run_with_token, thumbnail

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _post_chartable_events(server: Any) -> str:
    run_id, token = running_run_with_token(server)
    captions = ["a red square", "a green square", "a blue square", "a black square"]
    events = [
        *({"seq": i, "time": 1000.0 + i, "kind": "metric", "step": i, "values": {"loss": 2.0 / i, "lr": 0.01}}
          for i in range(1, 6)),
        {"seq": 6, "time": 1006.0, "kind": "eval", "step": 5, "values": {"val/loss": 1.0, "val/acc": 0.5}},
        {"seq": 7, "time": 1007.0, "kind": "matrix", "step": 5, "captions": captions,
         "similarity": [[0.9 if i == j else 0.1 for j in range(4)] for i in range(4)],
         "thumbnails": [thumbnail(i) for i in range(4)], "logit_scale": 14.3},
    ]
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return run_id


def test_dashboard_works_under_its_csp_with_no_violations(app_server, page, console):
    csp_violations: list[str] = []
    page.on("console", lambda msg: csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None)
    run_id = _post_chartable_events(app_server)
    for path in ("/", "/index.html", "/app.js", "/vendor/plotly.min.js", "/api/runs", "/api/runs/r-nope"):
        headers = app_server.client.get(path).headers
        assert "frame-ancestors 'none'" in headers["content-security-policy"], path
        assert "script-src 'self'" in headers["content-security-policy"] and "unsafe" not in \
            headers["content-security-policy"].split("script-src")[1].split(";")[0]
        assert headers["x-content-type-options"] == "nosniff", path

    page.goto(f"{app_server.base_url}/")
    page.wait_for_selector("text=posted")
    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    # Predicates as functions: a string expression would be eval'd in the page, which the CSP forbids.
    page.wait_for_function("() => document.querySelector('[data-chart=\"loss\"] .plot')?.data?.[0]?.x?.length === 5")
    page.wait_for_function("() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'")
    # Plotly's own stylesheet reached the page (hover labels, modebar): styles are allowed, scripts are not.
    assert page.evaluate("[...document.styleSheets].some((s) => s.ownerNode?.id?.startsWith('plotly'))")
    page.hover("[data-chart=\"loss\"] .plot .nsewdrag")
    page.goto(f"{app_server.base_url}/#/new")
    page.wait_for_selector("textarea, .cm-editor, form")
    assert not csp_violations, csp_violations
    console.assert_clean()


def test_no_other_site_can_frame_the_dashboard(app_server, page, console):
    framed = f"<iframe id='f' src='{app_server.base_url}/'></iframe>"
    console.allow("Refused to frame")  # the refusal this test expects
    # frame-ancestors 'none' refuses every framer, even a page of the server's own origin (a page a
    # compromised dataset preview could serve); another origin is refused the same way.
    other = app_server.base_url + "/framer.html"
    page.route(other, lambda route: route.fulfill(status=200, content_type="text/html", body=framed))
    page.goto(other)
    page.wait_for_timeout(1500)
    child = page.frames[1]
    assert child.locator("script[src='app.js']").count() == 0, f"the dashboard loaded in a frame ({child.url})"
