"""The similarity matrix of a diverging model: cells that were NaN or inf (null in the events, as the trainer
sends them) are struck-through blanks with a note that counts them, the colours span the finite cells, and a
snapshot with no finite cell at all still draws.

Runs are registered through the public attach API and their events posted with the run's token, as
`cliplab sync` does, so nothing trains.
Run: python -m pytest -q tests/frontend/test_nonfinite_matrix.py
"""

from __future__ import annotations

import io
import time
from typing import Any, Iterator

import pytest
from PIL import Image

from tests.backend_fixtures import AppServer, served_app
from tests.browser_fixtures import browser, console, page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CAPTIONS = ["a red square", "a blue circle", "a green triangle", "a yellow star"]
PARTLY = [[0.8, 0.2, None, 0.1],  # None: a NaN or inf the trainer sent as null
          [0.3, None, 0.25, 0.2],
          [0.1, 0.2, 0.7, None],
          [0.2, 0.15, 0.3, 0.6]]
GAPS = [(0, 2), (1, 1), (2, 3)]  # (row, column) of PARTLY's nulls
ALL_NAN = [[None] * 4 for _ in range(4)]
GRID_GREY = (0xe6, 0xe9, 0xef)  # plot_style's light theme.grid, which shows through a gap


def attach(server: AppServer, name: str, similarity: list[list[float | None]], logit_scale: float | None) -> str:
    r = server.client.post("/api/runs/attach", json={"config": {"name": name}, "run_dir": f"/elsewhere/{name}",
                                                      "host": "laptop", "live": False})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["run"]["id"], r.json()["token"]
    now = time.time() - 60
    events = [{"seq": 0, "time": now, "kind": "status", "status": "running", "reason": None, "step": 0},
              {"seq": 1, "time": now + 1, "kind": "matrix", "step": 10, "captions": CAPTIONS, "thumbnails": [],
               "similarity": similarity, "logit_scale": logit_scale},
              {"seq": 2, "time": now + 2, "kind": "status", "status": "failed", "reason": "loss became NaN",
               "step": 10}]
    r = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                           headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return run_id


@pytest.fixture(scope="module")
def diverged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with served_app(tmp_path_factory.mktemp("nonfinite-matrix")) as server:
        yield {"base": server.base_url, "partly": attach(server, "partly-nan", PARTLY, 14.3),
               "all": attach(server, "all-nan", ALL_NAN, None)}


def open_matrix(page: Any, base: str, run_id: str) -> None:
    page.goto(f"{base}/#/runs/{run_id}")
    page.wait_for_function("() => document.querySelector('.matrix-plot')?.data?.[0]?.type === 'heatmap'")


def heatmap(page: Any) -> dict[str, Any]:
    return page.evaluate("""() => { const gd = document.querySelector('.matrix-plot'), t = gd.data[0];
        return {z: t.z, zmin: t.zmin, zmax: t.zmax, text: t.text,
                paths: (gd.layout.shapes || []).filter((s) => s.type === 'path').map((s) => s.path),
                stats: document.querySelector('.matrix-stats').textContent,
                note: document.querySelector('.matrix-gaps').hidden ? null
                  : document.querySelector('.matrix-gaps').textContent}; }""")


def cell_pixel(page: Any, row: int, column: int, right: float) -> tuple[int, int, int]:
    """The colour on screen in cell (row, column), `right` of a cell's width right of its centre (off the
    stroke across a gap, which passes through the centre)."""
    page.locator(".matrix-plot").scroll_into_view_if_needed()
    at = page.evaluate(f"""() => {{ const gd = document.querySelector('.matrix-plot'), L = gd._fullLayout;
        const box = gd.querySelector('.main-svg').getBoundingClientRect();
        const cell = L.xaxis.l2p(1) - L.xaxis.l2p(0);
        return {{x: box.left + L.xaxis._offset + L.xaxis.l2p({column}) + {right} * cell,
                y: box.top + L.yaxis._offset + L.yaxis.l2p({row})}}; }}""")
    png = page.screenshot(clip={"x": at["x"], "y": at["y"], "width": 1, "height": 1})
    return Image.open(io.BytesIO(png)).convert("RGB").getpixel((0, 0))


def test_nan_cells_are_struck_through_blanks_counted_in_a_note_and_the_colours_span_the_finite_cells(
        diverged, page, console):
    open_matrix(page, diverged["base"], diverged["partly"])
    shown = heatmap(page)
    assert [(i, j) for i, row in enumerate(shown["z"]) for j, v in enumerate(row) if v is None] == GAPS
    assert (shown["zmin"], shown["zmax"]) == (0.1, 0.8)  # the finite cells' 0.1 … 0.8, not widened by a NaN
    assert shown["note"] == ("3 of 16 cells not finite (NaN/inf), struck-through blanks; "
                             "the colours span the finite cells.")
    [strokes] = shown["paths"]
    assert strokes.count("M") == len(GAPS)
    # The means and the ranking count the finite cells only: diagonal (0.8 + 0.7 + 0.6) / 3; row 1 ranks caption 0.
    assert "diagonal mean 0.7 ·" in shown["stats"] and "3 of 4 images rank their own caption first" in shown["stats"]
    assert "cosine not finite (NaN/inf)" in shown["text"][1][1] and "cosine = 0.300" in shown["text"][1][0]
    for row, column in GAPS:  # a grey no Viridis colour has shows through each gap
        assert cell_pixel(page, row, column, 0.3) == pytest.approx(GRID_GREY, abs=3)
    assert cell_pixel(page, 0, 0, 0.3) != pytest.approx(GRID_GREY, abs=40)
    screenshot(page, "matrix-nan-cells", "#matrix")

    page.select_option("#matrix-mode", "softmax")
    page.wait_for_function("() => document.querySelector('.matrix-plot').data[0].zmax === 1")
    soft = heatmap(page)
    assert [(i, j) for i, row in enumerate(soft["z"]) for j, v in enumerate(row) if v is None] == GAPS
    for row in soft["z"]:  # each row's probabilities are over its finite cells
        assert sum(v for v in row if v is not None) == pytest.approx(1)
    assert "P not finite (NaN/inf)" in soft["text"][0][2]
    console.assert_clean()


def test_a_snapshot_with_no_finite_cell_draws_its_grid_of_blanks_and_says_so(diverged, page, console):
    open_matrix(page, diverged["base"], diverged["all"])
    shown = heatmap(page)
    assert all(v is None for row in shown["z"] for v in row)
    assert shown["note"] == "All 16 cells not finite (NaN/inf): the model diverged; each is a struck-through blank."
    assert shown["paths"][0].count("M") == 16
    assert "diagonal mean – · off-diagonal mean – · 0 of 4 images" in shown["stats"]
    assert "logit scale not finite" in shown["stats"] and "colours span" not in shown["stats"]  # no range to tell
    assert cell_pixel(page, 2, 1, 0.3) == pytest.approx(GRID_GREY, abs=3)
    screenshot(page, "matrix-all-nan", "#matrix")
    console.assert_clean()
