"""Event ingestion, downsampled series, live streams: the app in-process on a real port and SQLite file."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from backend.models import Run
from backend.services.ingest import grant_token
from backend.store import rollups
from contract.events import MAX_STEP

from tests.backend_fixtures import wait_until


def _queued_run(server: Any, **config: Any) -> str:
    r = server.client.post("/api/runs", json={"config": {"train": {"steps": 1000}, **config}})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _running_with_token(server: Any) -> tuple[str, str]:
    """A run in the state the launcher leaves it in after spawning a trainer: running, with a token."""
    run_id = _queued_run(server)

    def job(session):
        run = session.get(Run, run_id)
        token = grant_token(run)
        run.status = "running"
        session.add(run)
        return token

    return run_id, server.services.writer.call(job)


def _metric(seq: int, step: int, **values: Any) -> dict[str, Any]:
    return {"seq": seq, "time": 1000.0 + seq, "kind": "metric", "step": step, "values": values}


def _running(seq: int, step: int) -> dict[str, Any]:
    """The status event a trainer sends when training (re)starts from `step`."""
    return {"seq": seq, "time": 1000.0 + seq, "kind": "status", "status": "running", "step": step}


def rollups_kept_and_rebuilt(server: Any, run_id: str) -> tuple[list, list]:
    """The run's rollups as ingest kept them, and as rebuilt from its stored points."""
    select = text("SELECT name, level, block_start, vmin, vmax, last_step FROM metric_rollups "
                  "WHERE run_id = :r ORDER BY name, level, block_start")

    def kept_then_rebuilt(session):
        kept = session.execute(select, {"r": run_id}).all()
        rollups.rebuild_after(session, run_id, -1)
        return kept, session.execute(select, {"r": run_id}).all()

    return server.services.writer.call(kept_then_rebuilt)


def _post(server: Any, run_id: str, token: str | None, events: list[dict], **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return server.client.post(f"/api/runs/{run_id}/events", json={"events": events}, headers=headers, **kw)


def test_events_need_the_runs_own_token(app_server):
    run_a, token_a = _running_with_token(app_server)
    run_b, token_b = _running_with_token(app_server)
    batch = [_metric(0, 1, loss=1.0)]
    missing = _post(app_server, run_a, None, batch)
    assert missing.status_code == 401 and "Bearer" in missing.json()["detail"]
    assert _post(app_server, run_a, "not-the-token", batch).status_code == 403
    other = _post(app_server, run_a, token_b, batch)
    assert other.status_code == 403 and run_a in other.json()["detail"]
    assert _post(app_server, "r-unknown", token_a, batch).status_code == 404
    # nothing was stored by the refused requests
    assert app_server.client.get(f"/api/runs/{run_a}/events").json()["events"] == []
    assert _post(app_server, run_a, token_a, batch).json() == {"accepted": 1, "duplicates": 0, "uncharted": []}


def test_ingest_is_idempotent_and_folds_events_into_the_run(app_server):
    run_id, token = _running_with_token(app_server)
    events = [
        {"seq": 0, "time": 1.0, "kind": "status", "status": "running", "reason": None, "step": 0, "total_steps": 40},
        _metric(1, 10, loss=3.0, lr=0.1),
        _metric(2, 20, loss=2.0, lr=0.2, grad_norm=None),
        {"seq": 3, "time": 4.0, "kind": "eval", "step": 20, "values": {"val/loss": 2.5, "val/acc": 0.3},
         "batch_size": 8},
        {"seq": 4, "time": 5.0, "kind": "heartbeat", "step": 25, "total_steps": 40},
        {"seq": 5, "time": 6.0, "kind": "eval", "step": 30, "values": {"val/loss": 2.7, "val/acc": 0.5},
         "batch_size": 8},
        {"seq": 6, "time": 7.0, "kind": "checkpoint", "step": 30, "path": "checkpoints/step_000030",
         "checkpoint_kind": "latest"},
    ]
    first = _post(app_server, run_id, token, events[:4]).json()
    assert first == {"accepted": 4, "duplicates": 0, "uncharted": []}
    # a retried batch overlapping what is stored: only the new events count
    again = _post(app_server, run_id, token, events[2:]).json()
    assert again == {"accepted": 3, "duplicates": 2, "uncharted": []}

    run = app_server.client.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "running" and run["step"] == 30 and run["total_steps"] == 40
    assert run["last_seq"] == 6
    assert run["latest"] == {"loss": 2.0, "lr": 0.2, "val/loss": 2.7, "val/acc": 0.5}
    assert run["best"] == {"val/loss": 2.5, "val/acc": 0.5}  # loss: lowest, accuracy: highest
    names = app_server.client.get(f"/api/runs/{run_id}/metrics").json()["names"]
    assert set(names) == {"loss", "lr", "grad_norm", "val/loss", "val/acc"}
    series = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss,val/acc"}).json()
    assert series["downsampled"] is False
    assert series["series"]["loss"]["step"] == [10, 20] and series["series"]["loss"]["last"] == [3.0, 2.0]
    assert series["series"]["val/acc"]["last"] == [0.3, 0.5]
    evals = app_server.client.get(f"/api/runs/{run_id}/evals").json()
    assert [e["step"] for e in evals] == [20, 30] and evals[0]["batch_size"] == 8
    stored = app_server.client.get(f"/api/runs/{run_id}/events").json()["events"]
    assert [e["seq"] for e in stored] == list(range(7))


def test_invalid_events_are_rejected_naming_the_field_and_nothing_is_stored(app_server):
    run_id, token = _running_with_token(app_server)
    bad = [
        _metric(0, 1, loss=1.0),
        {"seq": -1, "time": 1.0, "kind": "metric", "step": 1, "values": {}},
        {"seq": 2, "time": "yesterday", "kind": "heartbeat", "step": 1},
        {"seq": 3, "time": 1.0, "kind": "gossip"},
        {"seq": 4, "time": 1.0, "kind": "metric", "step": 2, "values": {"loss": "low"}},
        {"seq": 5, "time": 1.0, "kind": "status", "status": "exploded"},
        {"seq": 6, "time": 1.0, "kind": "matrix", "step": 2, "similarity": [[float("nan")]]},
    ]
    body = json.dumps({"events": bad})  # Python writes NaN, as a careless client would
    r = app_server.client.post(f"/api/runs/{run_id}/events", content=body,
                               headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["detail"]}
    assert {"events[1].seq", "events[2].time", "events[3].kind", "events[4].values.loss",
            "events[5].status", "events[6]"} <= fields
    not_json = app_server.client.post(f"/api/runs/{run_id}/events", content=b"{nope",
                                      headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert app_server.client.get(f"/api/runs/{run_id}/events").json()["events"] == []
    assert app_server.client.get(f"/api/runs/{run_id}").json()["last_seq"] == -1


def test_oversized_event_batch_gets_413_and_is_not_stored(app_server_factory):
    server = app_server_factory(max_body_bytes=64 * 1024)
    run_id, token = _running_with_token(server)
    big = [_metric(i, i, loss=float(i), padding_metric_with_a_long_name=1.0) for i in range(2000)]
    r = _post(server, run_id, token, big)
    assert r.status_code == 413 and "65536" in r.json()["detail"]

    # Without Content-Length (chunked upload) the limit holds too.
    def chunks():
        body = json.dumps({"events": big}).encode()
        for i in range(0, len(body), 8192):
            yield body[i:i + 8192]

    chunked = server.client.post(f"/api/runs/{run_id}/events", content=chunks(),
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert server.client.get(f"/api/runs/{run_id}").json()["last_seq"] == -1


def _reference_buckets(points: list[tuple[int, int, float]], n: int) -> dict[str, list]:
    """min/max/last per bucket computed plainly in Python (the SQL's independent reference)."""
    lo, hi = min(p[0] for p in points), max(p[0] for p in points)
    span = hi - lo + 1
    buckets: dict[int, list[tuple[int, int, float]]] = {}
    for step, seq, value in points:
        buckets.setdefault((step - lo) * n // span, []).append((step, seq, value))
    out: dict[str, list] = {"step": [], "min": [], "max": [], "last": []}
    for b in sorted(buckets):
        rows = buckets[b]
        last = max(rows, key=lambda r: (r[0], r[1]))
        out["step"].append(last[0])
        out["min"].append(min(r[2] for r in rows))
        out["max"].append(max(r[2] for r in rows))
        out["last"].append(last[2])
    return out


def test_series_are_downsampled_to_min_max_last_buckets_that_keep_spikes(app_server):
    run_id, token = _running_with_token(app_server)
    rng = random.Random(7)
    points, events, seq, value = [], [], 0, 5.0
    for step in range(0, 6000, 3):
        value += rng.gauss(0, 0.05)
        v = value + (40.0 if step in (1503, 4422) else 0.0)  # two spikes a plain average would flatten
        events.append(_metric(seq, step, loss=v))
        points.append((step, seq, v))
        seq += 1
    for step in range(3000, 3300, 3):  # a resumed stretch: the same steps again, later seq, new values
        v = rng.uniform(0, 1)
        events.append(_metric(seq, step, loss=v))
        points.append((step, seq, v))
        seq += 1
    for i in range(0, len(events), 500):
        assert _post(app_server, run_id, token, events[i:i + 500]).status_code == 200
    got = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss", "buckets": 97}).json()
    assert got["downsampled"] is True
    series = got["series"]["loss"]
    want = _reference_buckets(points, 97)
    assert len(series["step"]) == len(want["step"]) <= 97
    assert series["step"] == want["step"]
    for key in ("min", "max", "last"):
        assert series[key] == pytest.approx(want[key])
    assert max(series["max"]) == pytest.approx(max(p[2] for p in points))  # the spike survives

    # A step window is downsampled over its own range.
    window = app_server.client.get(f"/api/runs/{run_id}/series",
                                   params={"names": "loss", "start": 1000, "end": 1999, "buckets": 20}).json()
    inside = [p for p in points if 1000 <= p[0] <= 1999]
    assert window["series"]["loss"]["step"] == _reference_buckets(inside, 20)["step"]
    # Few points: returned as they are.
    raw = app_server.client.get(f"/api/runs/{run_id}/series",
                                params={"names": "loss", "start": 0, "end": 30}).json()
    assert raw["downsampled"] is False and raw["series"]["loss"]["step"] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30]


class SSEReader:
    """Reads a text/event-stream in a thread and collects the parsed events."""

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        self.events: list[dict[str, Any]] = []
        self._client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self._stream = self._client.stream("GET", url, headers=headers or {})
        self.response = self._stream.__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        current: dict[str, Any] = {}
        try:
            for line in self.response.iter_lines():
                if not line:
                    if "data" in current:
                        current["data"] = json.loads(current["data"])
                        self.events.append(current)
                    current = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    current[key] = value[1:] if value.startswith(" ") else value
        except httpx.HTTPError:
            pass

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    def close(self) -> None:
        self._client.close()


def test_run_stream_pushes_new_events_and_resumes_after_last_event_id(app_server):
    run_id, token = _running_with_token(app_server)
    _post(app_server, run_id, token, [_metric(i, i, loss=float(i)) for i in range(3)])
    url = f"{app_server.base_url}/api/runs/{run_id}/stream"
    live = SSEReader(url)  # default: current state, then only new events
    try:
        assert live.response.headers["content-type"].startswith("text/event-stream")
        wait_until(lambda: live.of("run"), 10, what="the initial run event")
        _post(app_server, run_id, token, [_metric(i, i, loss=float(i)) for i in range(3, 6)]
              + [{"seq": 6, "time": 9.0, "kind": "log", "level": "info", "message": "hello"}])
        wait_until(lambda: len(live.of("metric")) == 3 and live.of("log"), 10, what="live metric and log events")
        assert [e["id"] for e in live.of("metric")] == ["3", "4", "5"]
        assert live.of("metric")[0]["data"]["values"] == {"loss": 3.0}
        assert live.of("log")[0]["data"]["message"] == "hello"
    finally:
        live.close()
    # A reconnecting browser sends Last-Event-ID: it gets exactly what came after, then live events.
    resumed = SSEReader(url, {"Last-Event-ID": "4"})
    try:
        wait_until(lambda: len(resumed.events) >= 3, 10, what="backfill after Last-Event-ID")
        _post(app_server, run_id, token, [_metric(7, 7, loss=7.0)])
        wait_until(lambda: any(e.get("id") == "7" for e in resumed.events), 10, what="a live event after backfill")
        ids = [e["id"] for e in resumed.events if "id" in e]
        assert ids == ["5", "6", "7"]
    finally:
        resumed.close()


def test_run_list_stream_reports_created_and_changed_runs(app_server):
    reader = SSEReader(f"{app_server.base_url}/api/stream")
    try:
        time.sleep(0.3)
        run_id = _queued_run(app_server)
        wait_until(lambda: [e for e in reader.of("run") if e["data"]["id"] == run_id], 10, what="created run")
        app_server.client.post(f"/api/runs/{run_id}/stop")
        wait_until(lambda: [e for e in reader.of("run") if e["data"]["status"] == "stopped"], 10, what="stop")
        app_server.client.delete(f"/api/runs/{run_id}")
        wait_until(lambda: reader.of("deleted"), 10, what="deletion")
        assert reader.of("deleted")[0]["data"]["id"] == run_id
    finally:
        reader.close()


def test_events_file_backfill_fills_what_the_http_push_missed_without_duplicates(app_server):
    run_id, token = _running_with_token(app_server)
    run_dir = app_server.client.get(f"/api/runs/{run_id}").json()["run_dir"]
    events = [_metric(i, i * 10, loss=1.0 / (i + 1)) for i in range(50)]
    # The push delivered every other batch; the file has everything, plus a line torn by a crash.
    for i in range(0, 50, 20):
        _post(app_server, run_id, token, events[i:i + 10])
    from pathlib import Path

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "events.jsonl", "w") as f:
        for ev in events:
            f.write(json.dumps(ev) + "\n")
        f.write('{"seq": 50, "time": 1.0, "ki')
    new = app_server.services.launcher.backfill(run_id, Path(run_dir))
    assert new == 20
    assert app_server.services.launcher.backfill(run_id, Path(run_dir)) == 0  # nothing new since
    stored = app_server.client.get(f"/api/runs/{run_id}/events", params={"limit": 500}).json()["events"]
    assert [e["seq"] for e in stored] == list(range(50))
    series = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss"}).json()
    assert series["series"]["loss"]["step"] == [i * 10 for i in range(50)]


def test_a_resume_after_a_crash_replaces_the_lost_steps_instead_of_doubling_them(app_server):
    run_id, token = _running_with_token(app_server)
    # Attempt 1 logs steps 1..15 and dies without a checkpoint past step 10; attempt 2 resumes at 10.
    first = [_running(0, 0)] + [_metric(s, s, loss=1.0) for s in range(1, 16)]
    second = [_running(16, 10)] + [_metric(16 + s - 10, s, loss=2.0) for s in range(11, 14)]
    assert _post(app_server, run_id, token, first).status_code == 200
    assert _post(app_server, run_id, token, second).status_code == 200
    series = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss"}).json()["series"]["loss"]
    assert series["step"] == list(range(1, 14))  # 14 and 15 are gone until attempt 2 logs them again
    assert series["last"] == [1.0] * 10 + [2.0] * 3
    # Replaying both attempts (a backfill after a server restart) changes nothing.
    assert _post(app_server, run_id, token, first + second).status_code == 200
    again = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss"}).json()["series"]["loss"]
    assert again == series


def _eval(seq: int, step: int, **values: Any) -> dict[str, Any]:
    return {"seq": seq, "time": 1000.0 + seq, "kind": "eval", "step": step, "values": values}


def test_a_best_value_only_a_superseded_stretch_reached_stops_ranking_the_run(app_server):
    run_id, token = _running_with_token(app_server)
    acc, loss = "val/acc", "val/loss"
    # Attempt 1 evaluates at 10 and 20 (its best at 20), then is rewound to its checkpoint at step 10.
    first = [_running(0, 0), _eval(1, 10, **{loss: 0.9, acc: 0.4}), _eval(2, 20, **{loss: 0.3, acc: 0.8})]
    assert _post(app_server, run_id, token, first).status_code == 200
    assert app_server.client.get(f"/api/runs/{run_id}").json()["best"] == {loss: 0.3, acc: 0.8}
    # The resumed branch does worse at 20: the run's best is what its surviving evals reached.
    second = [_running(3, 10), _eval(4, 20, **{loss: 0.5, acc: 0.6})]
    assert _post(app_server, run_id, token, second).status_code == 200
    assert app_server.client.get(f"/api/runs/{run_id}").json()["best"] == {loss: 0.5, acc: 0.6}
    # A resume that drops nothing (from the newest step) leaves the best as it was.
    third = [_running(5, 20), _eval(6, 30, **{loss: 0.7, acc: 0.5})]
    assert _post(app_server, run_id, token, third).status_code == 200
    assert app_server.client.get(f"/api/runs/{run_id}").json()["best"] == {loss: 0.5, acc: 0.6}
    # Replaying everything (a backfill after a server restart) changes nothing.
    assert _post(app_server, run_id, token, first + second + third).status_code == 200
    assert app_server.client.get(f"/api/runs/{run_id}").json()["best"] == {loss: 0.5, acc: 0.6}


def _matrix(seq: int, step: int, similarity: float) -> dict[str, Any]:
    return {"seq": seq, "time": 1000.0 + seq, "kind": "matrix", "step": step, "captions": ["a", "b"],
            "similarity": [[similarity, 0.0], [0.0, similarity]]}


def test_evals_and_matrices_of_a_superseded_stretch_are_not_listed(app_server):
    run_id, token = _running_with_token(app_server)
    # Evaluated at 10, 20 and 30, then rewound to step 10: the new branch evaluates at 20 only (so far).
    first = [_running(0, 0)]
    for step, seq in ((10, 1), (20, 3), (30, 5)):
        first += [_eval(seq, step, **{"val/loss": step / 10}), _matrix(seq + 1, step, step / 100)]
    second = [_running(7, 10), _eval(8, 20, **{"val/loss": 0.25}), _matrix(9, 20, 0.5)]
    assert _post(app_server, run_id, token, first + second).status_code == 200
    evals = app_server.client.get(f"/api/runs/{run_id}/evals").json()
    assert [(e["step"], e["values"]["val/loss"]) for e in evals] == [(10, 1.0), (20, 0.25)]
    matrices = app_server.client.get(f"/api/runs/{run_id}/matrices").json()
    assert [m["step"] for m in matrices] == [10, 20]
    assert app_server.client.get(f"/api/runs/{run_id}/matrices/20").json()["similarity"][0][0] == 0.5


def test_concurrent_runs_posting_at_once_never_hit_database_locked(app_server):
    runs = [_running_with_token(app_server) for _ in range(4)]
    errors: list[str] = []

    def push(run_id: str, token: str) -> None:
        with httpx.Client(base_url=app_server.base_url, timeout=60) as client:
            for b in range(10):
                batch = [_metric(b * 50 + i, b * 50 + i, loss=math.sin(i), lr=0.1) for i in range(50)]
                r = client.post(f"/api/runs/{run_id}/events", json={"events": batch},
                                headers={"Authorization": f"Bearer {token}"})
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=push, args=run) for run in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for run_id, _ in runs:
        run = app_server.client.get(f"/api/runs/{run_id}").json()
        assert run["last_seq"] == 499 and run["step"] == 499


def test_integers_beyond_64_bits_are_422_naming_the_event_and_field_never_500(app_server):
    run_id, token = _running_with_token(app_server)
    huge = 10**19  # what a config with train.steps = 10**19 made the trainer send
    bad = [
        {"seq": 0, "time": 1.0, "kind": "status", "status": "starting", "total_steps": huge},
        {"seq": 1, "time": 1.0, "kind": "heartbeat", "step": huge, "total_steps": 10},
        {"seq": 2**63, "time": 1.0, "kind": "heartbeat", "step": 1},
        {"seq": 3, "time": 1.0, "kind": "checkpoint", "step": 2**63, "path": "checkpoints/step_1"},
        {"seq": 4, "time": 10**400, "kind": "heartbeat", "step": 1},
        _metric(5, 1, loss=10**400),
        {"seq": 6, "time": 1.0, "kind": "heartbeat", "step": 1, "total_steps": "many"},
    ]
    r = _post(app_server, run_id, token, bad)
    assert r.status_code == 422, r.text
    assert {e["field"] for e in r.json()["detail"]} == {
        "events[0].total_steps", "events[1].step", "events[2].seq", "events[3].step", "events[4].time",
        "events[5].values.loss", "events[6].total_steps"}
    assert app_server.client.get(f"/api/runs/{run_id}").json()["last_seq"] == -1
    # Steps stop at MAX_STEP (the series queries' bucket arithmetic stays within 64 bits up to there)
    beyond = [{"seq": 1, "time": 1.0, "kind": "heartbeat", "step": MAX_STEP + 1, "total_steps": MAX_STEP + 1}]
    assert {e["field"] for e in _post(app_server, run_id, token, beyond).json()["detail"]} == {
        "events[0].step", "events[0].total_steps"}
    # The largest values stored; an int value within float range is a float anyway.
    edge = [{"seq": 1, "time": 1.0, "kind": "heartbeat", "step": MAX_STEP, "total_steps": MAX_STEP},
            _metric(0, 1, loss=10**300), _metric(2, 2, loss=1.0), _metric(3, 3, loss=2.0), _metric(4, MAX_STEP, loss=3.0)]
    assert _post(app_server, run_id, token, edge).json() == {"accepted": 5, "duplicates": 0, "uncharted": []}
    # A seq the column holds but no trainer reaches is refused (409), lest it freeze the run's summary.
    far = [{"seq": 2**63 - 1, "time": 1.0, "kind": "heartbeat", "step": 1}]
    assert _post(app_server, run_id, token, far).status_code == 409
    run = app_server.client.get(f"/api/runs/{run_id}").json()
    assert run["total_steps"] == MAX_STEP and run["latest"]["loss"] == 3.0
    charted = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss", "buckets": 3}).json()
    assert charted["downsampled"] and charted["series"]["loss"]["step"] == [3, MAX_STEP]  # the middle bucket is empty
    assert charted["series"]["loss"]["max"] == [1e300, 3.0] and charted["series"]["loss"]["last"] == [2.0, 3.0]


def _write_lines(path: Any, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(line + "\n" for line in lines))


def test_events_file_backfill_skips_invalid_lines_with_one_warning_and_keeps_the_lines_after_them(
        app_server_factory, caplog):
    from pathlib import Path

    app_server = app_server_factory(tail_every_s=3600)  # the test drives the backfill, not the monitor thread
    run_id, _ = _running_with_token(app_server)
    events_file = Path(app_server.client.get(f"/api/runs/{run_id}").json()["run_dir"]) / "events.jsonl"
    _write_lines(events_file, [
        json.dumps(_metric(0, 1, loss=3.0)),
        json.dumps({"seq": 1, "time": 1.0, "kind": "status", "status": "starting", "total_steps": 10**19}),
        '{"seq": 2, "time": 1.0, "ki{"seq": 3, "time": 1.0}',  # torn by a killed writer
        json.dumps(_metric(4, 2, loss=2.0)),
    ])
    launcher = app_server.services.launcher
    with caplog.at_level("WARNING", logger="cliplab.launcher"):
        assert launcher.backfill(run_id, events_file.parent) == 2
        [warning] = [r for r in caplog.records if r.name == "cliplab.launcher"]
        assert run_id in warning.message and "2 invalid line(s)" in warning.message
        assert f"line 2: event.total_steps must be an integer in 0..{MAX_STEP}" in warning.message
        assert "line 3: not a JSON object" in warning.message
        # Later lines are read on the next pass, numbered on from the earlier ones; nothing is warned twice.
        _write_lines(events_file, [json.dumps(_metric(5, 3, loss=1.0)), json.dumps({"seq": -6, "time": 1.0})])
        assert launcher.backfill(run_id, events_file.parent) == 1
        assert launcher.backfill(run_id, events_file.parent) == 0
        warnings = [r.message for r in caplog.records if r.name == "cliplab.launcher"]
        assert len(warnings) == 2 and "1 invalid line(s)" in warnings[1] and "line 6: event.seq" in warnings[1]
    stored = app_server.client.get(f"/api/runs/{run_id}/events").json()["events"]
    assert [e["seq"] for e in stored] == [0, 4, 5]
    assert app_server.client.get(f"/api/runs/{run_id}").json()["latest"] == {"loss": 1.0}


def test_events_file_backfill_reads_nan_and_infinity_another_writer_left_as_the_null_the_trainer_sends(
        app_server_factory):
    from pathlib import Path

    app_server = app_server_factory(tail_every_s=3600)
    run_id, _ = _running_with_token(app_server)
    events_file = Path(app_server.client.get(f"/api/runs/{run_id}").json()["run_dir"]) / "events.jsonl"
    _write_lines(events_file, [json.dumps(_metric(0, 1, loss=3.0)), json.dumps(_metric(1, 2, loss=float("nan"))),
                               json.dumps(_metric(2, 3, loss=float("inf"))), json.dumps(_metric(3, 4, loss=1.0))])
    assert app_server.services.launcher.backfill(run_id, events_file.parent) == 4  # no line skipped
    series = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss"}).json()["series"]["loss"]
    assert series["step"] == [1, 4] and series["nonfinite"]["count"] == 2, series


def test_an_event_the_database_refuses_is_skipped_and_the_rest_of_the_backfill_is_stored(app_server_factory,
                                                                                          caplog):
    from pathlib import Path

    from sqlalchemy import text

    app_server = app_server_factory(tail_every_s=3600)
    run_id, _ = _running_with_token(app_server)
    with app_server.services.engine.begin() as conn:  # a constraint the event contract does not know about
        conn.execute(text("CREATE TRIGGER refuse_seq_2 BEFORE INSERT ON events WHEN NEW.seq = 2 "
                          "BEGIN SELECT RAISE(ABORT, 'seq 2 is refused'); END"))
    events_file = Path(app_server.client.get(f"/api/runs/{run_id}").json()["run_dir"]) / "events.jsonl"
    _write_lines(events_file, [json.dumps(_metric(i, i, loss=float(i))) for i in range(5)])
    with caplog.at_level("WARNING", logger="cliplab.launcher"):
        assert app_server.services.launcher.backfill(run_id, events_file.parent) == 4
    [warning] = [r.message for r in caplog.records if r.name == "cliplab.launcher"]
    assert "refused 1 event(s)" in warning and "seq 2:" in warning and "seq 2 is refused" in warning
    stored = app_server.client.get(f"/api/runs/{run_id}/events").json()["events"]
    assert [e["seq"] for e in stored] == [0, 1, 3, 4]


def test_an_old_attempts_events_uploaded_after_the_resume_do_not_bring_back_replaced_steps(app_server):
    run_id, token = _running_with_token(app_server)
    # Attempt 1 logs steps 1..12 but only the push up to step 6 arrives; attempt 2 resumes by hand at step 8.
    first = [_running(0, 0)] + [_metric(s, s, loss=1.0) for s in range(1, 13)]
    second = [_running(13, 8)] + [_metric(13 + s - 8, s, loss=2.0) for s in range(9, 13)]
    assert _post(app_server, run_id, token, first[:7]).status_code == 200
    assert _post(app_server, run_id, token, second).status_code == 200
    # `cliplab sync` then uploads attempt 1's missing events, older (lower seq) than the stored resume.
    assert _post(app_server, run_id, token, first[7:]).status_code == 200
    series = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss"}).json()["series"]["loss"]
    assert series["step"] == list(range(1, 13))
    assert series["last"] == [1.0] * 8 + [2.0] * 4
    assert series["min"] == series["max"] == series["last"]
    stored = app_server.client.get(f"/api/runs/{run_id}/events").json()["events"]
    assert len(stored) == len(first) + len(second)  # every event stays stored, the superseded ones included
    kept, rebuilt = rollups_kept_and_rebuilt(app_server, run_id)
    assert kept and kept == rebuilt


def test_a_resent_seq_with_other_values_changes_neither_the_series_nor_its_rollups(app_server):
    """Ingest makes a batch's points and rollup blocks before the writer runs it, assuming every event is
    new; a batch that re-sends a stored seq (here with different values, as a buggy client might) must be
    stored as if nothing had been made in advance: the stored value stays, and no rollup widens to the
    value that was not stored."""
    run_id, token = _running_with_token(app_server)
    first = [_metric(seq, seq, loss=1.0 + seq / 100) for seq in range(64)]
    assert _post(app_server, run_id, token, first).json() == {"accepted": 64, "duplicates": 0, "uncharted": []}
    again = [_metric(5, 5, loss=1000.0), _metric(64, 64, loss=1.5), _metric(40, 40, loss=-1000.0)]
    assert _post(app_server, run_id, token, again).json() == {"accepted": 1, "duplicates": 2, "uncharted": []}

    kept, rebuilt = rollups_kept_and_rebuilt(app_server, run_id)
    assert kept == rebuilt
    assert max(row[4] for row in kept) == pytest.approx(1.63) and min(row[3] for row in kept) == 1.0
    series = app_server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss", "buckets": 8}).json()
    assert max(series["series"]["loss"]["max"]) == pytest.approx(1.63)
    assert min(series["series"]["loss"]["min"]) == 1.0


def test_a_run_charts_its_first_series_names_and_keeps_later_ones_in_their_events(app_server_factory):
    """A script making a metric name per step must not grow the run's summary (which every run list carries)
    without bound: names past CLIPLAB_MAX_SERIES_PER_RUN stay in the stored events, and the known ones chart on."""
    server = app_server_factory(max_series_per_run=4)
    run_id, token = _running_with_token(server)
    first = _post(server, run_id, token, [_metric(0, 0, loss=3.0, lr=0.1, acc=0.2)]).json()
    assert first == {"accepted": 1, "duplicates": 0, "uncharted": []}

    second = _post(server, run_id, token, [_metric(1, 1, loss=2.0, x_0=1.0, x_1=1.5),
                                           _metric(2, 2, loss=1.0, x_2=2.0, x_0=0.5)]).json()
    assert second == {"accepted": 2, "duplicates": 0, "uncharted": ["x_1", "x_2"]}  # x_0 filled the last place
    third = _post(server, run_id, token, [_metric(3, 3, loss=0.5, x_3=9.0)]).json()
    assert third["uncharted"] == ["x_3"]

    assert server.client.get(f"/api/runs/{run_id}/metrics").json()["names"] == ["loss", "lr", "acc", "x_0"]
    run = server.client.get(f"/api/runs/{run_id}").json()
    assert run["latest"] == {"loss": 0.5, "lr": 0.1, "acc": 0.2, "x_0": 0.5}
    series = server.client.get(f"/api/runs/{run_id}/series", params={"names": "loss,x_0,x_1"}).json()["series"]
    assert series["loss"]["last"] == [3.0, 2.0, 1.0, 0.5]
    assert series["x_0"]["step"] == [1, 2] and series["x_0"]["last"] == [1.0, 0.5]
    assert series.get("x_1", {}).get("step", []) == []
    stored = server.client.get(f"/api/runs/{run_id}/events").json()["events"]
    assert stored[1]["values"] == {"loss": 2.0, "x_0": 1.0, "x_1": 1.5}  # the event keeps every value
    assert stored[3]["values"] == {"loss": 0.5, "x_3": 9.0}


def test_a_metric_name_with_a_comma_is_asked_for_whole_and_comma_lists_still_work(app_server):
    run_id, token = _running_with_token(app_server)
    _post(app_server, run_id, token, [_metric(0, 1, **{"loss,smoothed": 2.0, "loss": 3.0, "lr": 0.1}),
                                      _metric(1, 2, **{"loss,smoothed": 1.5, "loss": 2.5, "lr": 0.1})])

    def series(query: str) -> dict:
        return app_server.client.get(f"/api/runs/{run_id}/series?{query}").json()["series"]

    assert series("names=loss%2Csmoothed")["loss,smoothed"]["last"] == [2.0, 1.5]  # one name, not loss + smoothed
    assert set(series("names=loss%2Csmoothed&names=lr")) == {"loss,smoothed", "lr"}
    assert set(series("names=loss,lr")) == {"loss", "lr"}  # a comma list of names the run has
    assert set(series("")) == {"loss,smoothed", "loss", "lr"}
