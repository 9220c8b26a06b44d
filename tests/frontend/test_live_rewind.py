"""A run page left open while its run resumes from an earlier step (a rewind, or a crash resume from an older
checkpoint): the charts and the similarity matrix drop what the abandoned stretch logged and follow the new
branch live, without a reload.

The run is registered through the public attach API and its events posted with the run's token, as an attached
trainer does, so nothing trains.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from tests.backend_fixtures import AppServer
from tests.browser_fixtures import browser, console, page, wait_run_page_loaded  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CAPTIONS = ["a red square", "a blue circle"]
FIRST = {10: [[0.5, 0.1], [0.2, 0.4]], 20: [[0.7, 0.0], [0.1, 0.6]]}  # the branch the rewind abandons
REDONE = [[0.3, 0.2], [0.25, 0.35]]  # the new branch's snapshot at step 15


def poster(server: AppServer) -> tuple[str, Callable[[list[dict[str, Any]]], None]]:
    r = server.client.post("/api/runs/attach", json={"config": {"name": "rewound"}, "run_dir": "/elsewhere/rewound"})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["token"]

    def post(events: list[dict[str, Any]]) -> None:
        answer = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                                    headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text

    return run_id, post


def events(first_seq: int, status_step: int, loss: Callable[[int], float], steps: range,
           matrices: dict[int, list[list[float]]]) -> list[dict[str, Any]]:
    """A `running` status from `status_step`, then a loss per step and the snapshots, in seq order."""
    t0 = time.time()
    out: list[dict[str, Any]] = [{"kind": "status", "status": "running", "reason": None, "step": status_step}]
    for step in steps:
        out.append({"kind": "metric", "step": step, "values": {"loss": loss(step)}})
        if step in matrices:
            out.append({"kind": "matrix", "step": step, "captions": CAPTIONS, "thumbnails": [],
                        "similarity": matrices[step], "logit_scale": 14.3})
    return [{**e, "seq": first_seq + i, "time": t0 + i * 0.01} for i, e in enumerate(out)]


def loss_chart(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => { const t = document.querySelector('.chart-card[data-chart="loss"] .plot').data
        .find((d) => d.name === 'loss' || d.name?.endsWith('loss')); return {x: t.x, y: t.y}; }""")


def shown_matrix(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => ({label: document.querySelector('#matrix output').textContent,
        z: document.querySelector('.matrix-plot').data[0].z})""")


def test_an_open_run_page_follows_a_rewind_live_in_its_charts_and_matrix(app_server, page, console):
    run_id, post = poster(app_server)
    first = events(0, 0, lambda s: 3.0 - 0.05 * s, range(1, 21), FIRST)
    post(first)
    page.goto(f"{app_server.base_url}/#/runs/{run_id}")
    wait_run_page_loaded(page)
    page.locator("#matrix output", has_text="step 20 (2 of 2)").wait_for()
    assert max(loss_chart(page)["x"]) == 20

    post(events(len(first), 10, lambda s: 1.0, range(11, 16), {15: REDONE}))  # resumed from step 10
    page.locator("#matrix output", has_text="step 15 (2 of 2)").wait_for()
    page.wait_for_function("""() => document.querySelector('.matrix-plot')?.data?.[0]?.z?.[0]?.[0] === 0.3""")
    assert shown_matrix(page)["z"] == REDONE
    page.wait_for_function("""() => { const t = document.querySelector('.chart-card[data-chart="loss"] .plot')
        .data.find((d) => d.name === 'loss' || d.name?.endsWith('loss')); return Math.max(...t.x) === 15; }""")
    chart = loss_chart(page)
    points = dict(zip(chart["x"], chart["y"]))
    assert 20 not in points and points[15] == pytest.approx(1.0) and points[10] == pytest.approx(2.5), points
    console.assert_clean()
