"""GET /api/runs/{id}/metrics.csv: every stored point of a run's series as a streamed CSV download.

Events go through the real ingest API (resumes that supersede points, null values, hostile names); each
export is parsed with Python's csv module and compared row by row with the points that should survive, and
with what GET /series gives the charts. A 200k-point export from a live `cliplab serve` must not grow the
server's peak memory with the series.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from tests.backend.test_ingest import _metric, _post, _running, _running_with_token
from tests.browser_fixtures import browser, console, page  # noqa: F401 - fixtures

HEADER = ["step", "time", "metric", "value"]
SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _export(server: Any, run_id: str, **params: Any) -> list[list[str]]:
    r = server.client.get(f"/api/runs/{run_id}/metrics.csv", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.reader(io.StringIO(r.text, newline="")))


def _expected(points: list[tuple[str, int, int, float, float | None]]) -> list[list[str]]:
    """The CSV rows of (name, step, seq, time, value) points: by name, step, seq; null values blank."""
    return [HEADER] + [[str(step), repr(t), name, "" if value is None else repr(value)]
                       for name, step, _seq, t, value in sorted(points, key=lambda p: (p[0], p[1], p[2]))]


def _random_run(rng: random.Random) -> tuple[list[dict[str, Any]], list[tuple[str, int, int, float, float | None]]]:
    """Events of a run with repeated steps, null values and two resumes from an earlier step, and the
    (name, step, seq, time, value) points that survive them."""
    events: list[dict[str, Any]] = []
    points: list[tuple[str, int, int, float, float | None]] = []
    seq = step = 0
    for attempt in range(3):
        if attempt:  # a resume from a checkpoint behind the last step: the points logged past it are superseded
            step = rng.randint(step // 2, step)
            events.append(_running(seq, step))
            points = [p for p in points if p[1] <= step or p[2] > seq]
            seq += 1
        for _ in range(rng.randint(300, 600)):
            step += rng.choice((1, 1, 2, 9))
            for _ in range(2 if rng.random() < 0.05 else 1):  # the same step logged twice
                values = {"loss": rng.gauss(0, 1) if rng.random() > 0.03 else None, "lr": rng.random() / 1e4}
                events.append(_metric(seq, step, **values))
                points += [(name, step, seq, 1000.0 + seq, value) for name, value in values.items()]
                seq += 1
    return events, points


def _check_random_run(server: Any, rng: random.Random) -> None:
    run_id, token = _running_with_token(server)
    events, points = _random_run(rng)
    for i in range(0, len(events), 400):
        assert _post(server, run_id, token, events[i:i + 400]).status_code == 200
    assert any(p[4] is None for p in points) and len({(p[0], p[1]) for p in points}) < len(points)
    assert _export(server, run_id) == _expected(points)
    assert _export(server, run_id, names="lr") == _expected([p for p in points if p[0] == "lr"])
    # what the charts have: /series's raw points (loss less its null values) are the export's rows
    series = server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss", "buckets": 20_000}).json()
    assert series["downsampled"] is False
    loss_rows = [row for row in _export(server, run_id, names="loss")[1:] if row[3]]
    assert [int(row[0]) for row in loss_rows] == series["series"]["loss"]["step"]
    assert [float(row[3]) for row in loss_rows] == series["series"]["loss"]["last"]


def test_the_export_has_the_points_that_survived_resumes_with_null_values_blank(app_server):
    _check_random_run(app_server, random.Random(3))


@pytest.mark.slow  # starts PostgreSQL
def test_the_export_on_postgresql_has_the_same_rows(postgres_url, app_server_factory):
    server = app_server_factory(database_url=postgres_url)
    assert server.services.engine.dialect.name == "postgresql"
    _check_random_run(server, random.Random(4))


def test_a_series_longer_than_a_page_comes_whole_across_page_edges(app_server, monkeypatch):
    from backend.services import export

    monkeypatch.setattr(export, "PAGE_ROWS", 7)  # pages end inside repeated steps and around null values
    run_id, token = _running_with_token(app_server)
    events = [_metric(seq, seq // 3, loss=None if seq % 5 == 0 else seq / 8) for seq in range(60)]
    assert _post(app_server, run_id, token, events).status_code == 200
    points = [("loss", ev["step"], ev["seq"], ev["time"], ev["values"]["loss"]) for ev in events]
    assert _export(app_server, run_id) == _expected(points)


def test_names_pick_series_and_unknown_names_are_refused_by_name(app_server):
    run_id, token = _running_with_token(app_server)
    batch = [_metric(0, 1, **{"loss": 1.5, "lr": 0.1, "a,b": 2.0}), _metric(1, 2, loss=1.25)]
    assert _post(app_server, run_id, token, batch).status_code == 200
    assert [row[2] for row in _export(app_server, run_id, names="lr,loss")[1:]] == ["loss", "loss", "lr"]
    assert [row[2] for row in _export(app_server, run_id, names=["lr", "loss"])[1:]] == ["loss", "loss", "lr"]
    assert _export(app_server, run_id, names="a,b") == [HEADER, ["1", "1000.0", "a,b", "2.0"]]  # taken whole
    r = app_server.client.get(f"/api/runs/{run_id}/metrics.csv", params={"names": "loss,acc,val/acc"})
    assert r.status_code == 422
    [problem] = r.json()["detail"]
    assert problem["field"] == "names"
    assert "'acc', 'val/acc'" in problem["message"] and "'loss'" in problem["message"]


def test_a_run_without_metrics_gives_the_header_and_a_deleted_run_404(app_server):
    run_id, _ = _running_with_token(app_server)
    assert _export(app_server, run_id) == [HEADER]
    other = app_server.client.post("/api/runs", json={"name": "gone", "config": {"train": {"steps": 1}}}).json()["id"]
    assert app_server.client.delete(f"/api/runs/{other}").status_code == 204
    r = app_server.client.get(f"/api/runs/{other}/metrics.csv")
    assert r.status_code == 404 and other in r.json()["detail"]


def test_metric_names_with_commas_quotes_and_line_breaks_read_back_whole(app_server):
    run_id, token = _running_with_token(app_server)
    names = ['a,b', 'say "hi"', "two\nlines", "cr\r\nlf", "=1+2", " spaced ", "étude/損失", '"', ","]
    batch = [_metric(0, 5, **{name: float(i) for i, name in enumerate(names)}), _metric(1, 6, **{names[2]: None})]
    assert _post(app_server, run_id, token, batch).status_code == 200
    rows = _export(app_server, run_id)
    want = [[str(5), "1000.0", name, repr(float(names.index(name)))] for name in sorted(names)]
    want.insert(sorted(names).index("two\nlines") + 1, ["6", "1001.0", "two\nlines", ""])
    assert rows == [HEADER] + want
    assert _export(app_server, run_id, names=["two\nlines", "a,b"])[1:] == [
        ["5", "1000.0", "a,b", "0.0"], ["5", "1000.0", "two\nlines", "2.0"], ["6", "1001.0", "two\nlines", ""]]


@pytest.mark.parametrize("run_name", [
    "../../etc/passwd", 'quote" and \\ back', "line\r\nSet-Cookie: stolen=1", ".hidden", "-rf --no-preserve-root",
    "émigré 損失 run", "\u202etxt.exe", "CON", "...", "💥" * 60, "x" * 200, "a/b\\c:d*e?f<g>h|i",
])
def test_the_file_name_is_safe_whatever_the_run_name(app_server, run_name):
    run_id, _ = _running_with_token(app_server)
    assert app_server.client.patch(f"/api/runs/{run_id}", json={"name": run_name}).status_code == 200
    r = app_server.client.get(f"/api/runs/{run_id}/metrics.csv")
    assert r.status_code == 200 and "set-cookie" not in r.headers
    disposition = r.headers["content-disposition"]
    plain = re.fullmatch(r'attachment; filename="([^"]+)"(?:; filename\*=UTF-8\'\'(\S+))?', disposition)
    assert plain, disposition
    assert SAFE_FILE_NAME.match(plain.group(1)) and plain.group(1).endswith(f"-{run_id}-metrics.csv")
    if plain.group(2):
        unicode_name = unquote(plain.group(2))
        assert re.fullmatch(r"\w[\w.-]*", unicode_name) and unicode_name.endswith(f"-{run_id}-metrics.csv")
        assert len(unicode_name.encode()) <= 255
    if run_name == "émigré 損失 run":
        assert plain.group(1) == f"emigre_run-{run_id}-metrics.csv"
        assert unquote(plain.group(2)) == f"émigré_損失_run-{run_id}-metrics.csv"


def _server_with_token(app_server_factory: Any, access_token: str) -> tuple[Any, str, str]:
    """A server with an access token, its client sending it, and a running run with a run token."""
    server = app_server_factory(token=access_token)
    server.client.headers["Authorization"] = f"Bearer {access_token}"
    return server, *_running_with_token(server)


def test_the_export_needs_the_servers_access_token(app_server_factory):
    server, run_id, token = _server_with_token(app_server_factory, "s3cret-token")
    assert _post(server, run_id, token, [_metric(0, 1, loss=0.5)]).status_code == 200
    url = f"{server.base_url}/api/runs/{run_id}/metrics.csv"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401  # a run token
    with_header = httpx.get(url, headers={"Authorization": "Bearer s3cret-token"})
    with_cookie = httpx.get(url, headers={"Cookie": "cliplab_token=s3cret-token"})
    assert with_header.text == with_cookie.text == "step,time,metric,value\n1,1000.0,loss,0.5\n"


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


def _insert_points(db_path: Path, run_id: str, n: int) -> None:
    """`n` points of `loss` (a null value every 1000 steps) written to the server's SQLite file directly."""
    with sqlite3.connect(db_path, timeout=30) as db:
        db.executemany("INSERT INTO metric_points VALUES (?, 'loss', ?, ?, ?, ?)",
                       ((run_id, s, s, 1e9 + s, 1 / (1 + s)) for s in range(n) if s % 1000))
        db.executemany("INSERT INTO metric_nonfinite VALUES (?, 'loss', ?, ?, ?)",
                       ((run_id, s, s, 1e9 + s) for s in range(0, n, 1000)))
        db.execute("UPDATE runs SET metric_names = ? WHERE id = ?", (json.dumps(["loss"]), run_id))


def test_a_200k_point_export_streams_without_holding_the_series_in_server_memory(live_server_factory):
    server = live_server_factory(demo=False)
    run_id = server.post("/api/runs", json={"name": "big", "config": {"train": {"steps": 1}}}).json()["id"]
    n = 200_000
    _insert_points(server.data_dir / "cliplab.db", run_id, n)
    before = _peak_rss_mb(server.proc.pid)
    lines, size = 0, 0
    with server.client.stream("GET", f"/api/runs/{run_id}/metrics.csv") as r:
        assert r.status_code == 200 and "content-length" not in r.headers  # chunked: sent while it is read
        for chunk in r.iter_bytes():
            lines, size = lines + chunk.count(b"\n"), size + len(chunk)
    growth = _peak_rss_mb(server.proc.pid) - before
    print(f"\n{n:,} points: {size / 1e6:.1f} MB of CSV, server peak RSS +{growth:.1f} MB")
    assert lines == n + 1
    # Held whole, the series' rows and text took ~90 MB here; page by page it is ~10 MB, whatever its length.
    assert growth < 30, f"the export grew the server's peak memory by {growth:.0f} MB for {size / 1e6:.0f} MB of CSV"


def test_the_run_page_links_its_metrics_csv_which_downloads_with_the_browsers_token(app_server_factory, page,
                                                                                    console):
    server, run_id, token = _server_with_token(app_server_factory, "s3cret-token")
    assert _post(server, run_id, token, [_metric(0, 1, loss=0.5), _metric(1, 2, loss=0.25)]).status_code == 200
    assert server.client.patch(f"/api/runs/{run_id}", json={"name": "my run"}).status_code == 200
    page.goto(f"{server.base_url}/?token=s3cret-token")  # logs the browser in (a cookie), as a user does
    page.goto(f"{server.base_url}/#/runs/{run_id}")
    link = page.locator("#charts .card-head a[download]", has_text="Download CSV")
    link.wait_for()
    assert link.get_attribute("href") == f"/api/runs/{run_id}/metrics.csv"
    with page.expect_download() as download:
        link.click()
    assert download.value.suggested_filename == f"my_run-{run_id}-metrics.csv"
    assert Path(download.value.path()).read_text() == "step,time,metric,value\n1,1000.0,loss,0.5\n2,1001.0,loss,0.25\n"
    console.assert_clean()
