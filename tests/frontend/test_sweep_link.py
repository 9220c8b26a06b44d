"""The runs-table link `cliplab sweep` prints opens the dashboard on that sweep alone, a column per swept
setting, in a browser that never saw the dashboard before."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.backend_fixtures import REPO
from tests.browser_fixtures import browser, console, page, screenshot  # noqa: F401 - fixtures

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_printed_link_shows_the_sweep_with_its_settings(live_server, page, console):
    live_server.post("/api/runs", json={"name": "not-in-the-sweep", "config": {}}).raise_for_status()
    done = subprocess.run([sys.executable, "-m", "trainer", "sweep", "cpu-demo", "--grid", "optim.lr=1e-4,3e-4,1e-3",
                           "--grid", "train.batch_size=8", "--name", "lr", "--server", live_server.base_url],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip().splitlines()[-1].split(": ", 1)[1]

    page.goto(link)
    page.wait_for_function("() => document.querySelectorAll('.runs-table tbody tr').length === 3")
    names = page.locator(".runs-table tbody td.col-name a").all_inner_texts()
    assert sorted(names) == ["lr-1 lr=1e-4 batch_size=8", "lr-2 lr=3e-4 batch_size=8", "lr-3 lr=1e-3 batch_size=8"]
    headers = page.locator(".runs-table thead th.col-extra").evaluate_all("ths => ths.map(th => th.dataset.col)")
    assert headers == ["config:optim.lr", "config:train.batch_size", "best:val/loss"]
    lr_cells = page.locator(".runs-table tbody tr td.col-extra:nth-child(1 of .col-extra)").all_inner_texts()
    assert sorted(float(v) for v in lr_cells) == [1e-4, 3e-4, 1e-3]
    screenshot(page, "sweep-runs-table")
    console.assert_clean()
