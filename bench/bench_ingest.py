"""Event-ingestion throughput and downsampled-series latency of a real `cliplab serve`.

    python bench/bench_ingest.py                      # SQLite in a temporary data dir
    python bench/bench_ingest.py --runs 8 --points 1000000 --database-url postgresql://user@host/db

1. Ingest: `--runs` client processes, one per run, each POSTs `--batches` batches of `--batch-events` metric
   events carrying `--values` scalars (what a trainer's push thread sends), all at once. Prints points/s,
   events/s and request latency percentiles.
   With `--offered P`, the clients are trainers instead: each makes its events on a schedule (P points/s in
   all) and sends them with the trainer's own pusher (trainer.events.HttpPusher: up to 200 events or 0.5 s
   per request, one request at a time). Prints the points/s stored, request latency, and the delay from an
   event's making to its storing (how far the dashboard lags). Back-to-back posting measures the most the
   server can take, and there each request waits for the 15 others (Little's law: latency = 16 x batch /
   throughput); a latency target means something only at a load below that most.
2. Query: a run with a `--points`-point series (bulk-loaded straight into the table, so the load time does
   not dominate), then the latency of GET /series?buckets=1000 over the whole range and over a window.

Tokens are granted by writing their hashes into the runs table, as the launcher does when it spawns a
trainer (this bench starts no trainer).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# The client processes (spawned) import this module too: the database imports stay in the functions only the
# parent runs, or 16 clients importing SQLAlchemy would take seconds of the cores the server is measured on.


def start_server(data_dir: Path, port: int, database_url: str | None) -> subprocess.Popen:
    env = {**os.environ, "CLIPLAB_MAX_CPU_RUNS": "0", "CLIPLAB_DATA_DIR": str(data_dir)}
    env.pop("CLIPLAB_TOKEN", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    else:
        env.pop("DATABASE_URL", None)
    serve = os.environ.get("BENCH_SERVE_SCRIPT")  # e.g. a profiler wrapper taking `serve`'s flags
    command = [sys.executable, *([serve] if serve else ["-m", "trainer", "serve"])]
    proc = subprocess.Popen([*command, "--port", str(port), "--no-demo", "--log-level", "warning"], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_running_runs(base: str, db_url: str, n: int) -> list[tuple[str, str]]:
    """n runs in the state a launched trainer's run is in: running, with a token."""
    from sqlalchemy import text

    from backend.db import make_engine
    from backend.services.ingest import hash_token

    ids = [httpx.post(f"{base}/api/runs", json={"name": f"bench-{i}", "config": {}}, timeout=60).json()["id"]
           for i in range(n)]
    runs = [(run_id, f"bench-token-{run_id}") for run_id in ids]
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for run_id, token in runs:
            conn.execute(text("UPDATE runs SET status='running', token_hash=:h WHERE id=:id"),
                         {"h": hash_token(token), "id": run_id})
    engine.dispose()
    return runs


def post_batches(base: str, run_id: str, token: str, batches: int, batch_events: int, values: int,
                 ready: Any, results: Any) -> None:
    """One run's client: waits at `ready` (every client started, nothing measured yet), then posts its batches
    back to back and puts (first send, last reply, request latencies) on `results`."""
    names = metric_names(values)
    latencies = []
    with httpx.Client(base_url=base, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        ready.wait()
        first = time.time()
        seq = 0
        for _ in range(batches):
            events = []
            for _ in range(batch_events):
                events.append({"seq": seq, "time": time.time(), "kind": "metric", "step": seq,
                               "values": {n: 1.0 / (seq + 1 + j) for j, n in enumerate(names)}})
                seq += 1
            t0 = time.perf_counter()
            r = client.post(f"/api/runs/{run_id}/events", json={"events": events})
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            assert r.json()["accepted"] == batch_events, r.text
    results.put((first, time.time(), latencies))


def push_paced(base: str, run_id: str, token: str, events_per_s: float, seconds: float, values: int,
               ready: Any, results: Any) -> None:
    """One run's trainer logging `events_per_s` metric events on schedule, sent by trainer.events.HttpPusher;
    puts (first event made, last event stored, request latencies, delays from making to storing, failures)
    on `results`."""
    from trainer.events import HttpPusher

    latencies: list[float] = []
    delays: list[float] = []

    class TimedPusher(HttpPusher):
        def _post(self, batch: list[dict]) -> None:
            t0 = time.perf_counter()
            super()._post(batch)
            latencies.append(time.perf_counter() - t0)
            stored = time.time()
            delays.extend(stored - ev["time"] for ev in batch)

    names = metric_names(values)
    pusher = TimedPusher(base, run_id, token)
    total = int(events_per_s * seconds)
    ready.wait()
    # Trainers start at different moments: a random phase within one batch's worth of events, or all 16 would
    # fill and send their batches in step, a burst every period that no real set of runs sends.
    time.sleep(random.uniform(0, pusher.batch_size / events_per_s))
    first = time.time()
    seq = 0
    while seq < total:
        due = min(total, int((time.time() - first) * events_per_s) + 1)
        for n in range(seq, due):
            pusher.put({"seq": n, "time": time.time(), "kind": "metric", "step": n,
                        "values": {name: 1.0 / (n + 1 + j) for j, name in enumerate(names)}})
        seq = due
        time.sleep(0.005)
    pusher.close(timeout_s=300)
    results.put((first, time.time(), latencies, delays, pusher.failures))


def metric_names(values: int) -> list[str]:
    names = ["loss", "lr", "acc", "similarity", "grad_norm", "logit_scale", "samples_per_s", "step_time"][:values]
    return names + [f"extra_{i}" for i in range(values - len(names))]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` so far (Linux; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_clients(base: str, db_url: str, server_pid: int, runs: int, target: Any, args: tuple
                ) -> tuple[list[tuple], float | None]:
    """Start one `target(base, run_id, token, *args, ready, results)` process per run, start them together,
    and return what each put on its results queue and the server's CPU seconds meanwhile."""
    targets = make_running_runs(base, db_url, runs)
    ctx = mp.get_context("spawn")
    ready, results = ctx.Barrier(runs + 1), ctx.Queue()
    clients = [ctx.Process(target=target, args=(base, run_id, token, *args, ready, results))
               for run_id, token in targets]
    for client in clients:
        client.start()
    ready.wait(timeout=120)  # every client imported and connected before the clock starts
    cpu_before = cpu_seconds(server_pid)
    spans = [results.get(timeout=900) for _ in clients]
    cpu_after = cpu_seconds(server_pid)
    for client in clients:
        client.join()
    return spans, None if cpu_before is None or cpu_after is None else cpu_after - cpu_before


def percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return f"p50 {p(0.5):.1f} ms, p95 {p(0.95):.1f} ms, max {ordered[-1] * 1000:.1f} ms"


def bench_ingest(base: str, db_url: str, server_pid: int, runs: int, batches: int, batch_events: int,
                 values: int) -> None:
    spans, cpu = run_clients(base, db_url, server_pid, runs, post_batches, (batches, batch_events, values))
    wall = max(last for _, last, _ in spans) - min(first for first, _, _ in spans)
    events = runs * batches * batch_events
    points = events * values
    print(f"ingest: {runs} concurrent runs x {batches} batches x {batch_events} events x {values} values")
    print(f"  {points:,} points ({events:,} events) in {wall:.2f} s -> {points / wall:,.0f} points/s, "
          f"{events / wall:,.0f} events/s")
    print(f"  request latency: {percentiles([x for _, _, part in spans for x in part])}")
    if cpu is not None:
        print(f"  server CPU: {cpu:.2f} s ({cpu / wall:.0%} of one core), "
              f"{cpu / (runs * batches) * 1000:.1f} ms per batch")


def bench_paced(base: str, db_url: str, server_pid: int, runs: int, offered: float, seconds: float,
                values: int) -> None:
    events_per_s = offered / runs / values
    spans, cpu = run_clients(base, db_url, server_pid, runs, push_paced, (events_per_s, seconds, values))
    wall = max(span[1] for span in spans) - min(span[0] for span in spans)
    delays = [x for span in spans for x in span[3]]
    points = len(delays) * values
    requests = [x for span in spans for x in span[2]]
    print(f"paced ingest: {runs} trainers x {events_per_s:,.0f} events/s x {values} values = {offered:,.0f} "
          f"points/s offered for {seconds:.0f} s")
    print(f"  {points:,} points stored in {wall:.2f} s -> {points / wall:,.0f} points/s, "
          f"{len(requests)} requests of {len(delays) / len(requests):.0f} events on average, "
          f"{sum(span[4] for span in spans)} failed")
    print(f"  request latency: {percentiles(requests)}")
    print(f"  event made -> stored: {percentiles(delays)}")
    if cpu is not None:
        print(f"  server CPU: {cpu:.2f} s ({cpu / wall:.0%} of one core)")


def bulk_load_series(base: str, db_url: str, n: int) -> str:
    from sqlalchemy import text
    from sqlmodel import Session

    from backend.db import make_engine
    from backend.store import rollups

    run_id = httpx.post(f"{base}/api/runs", json={"name": "bench-1m", "config": {}}, timeout=60).json()["id"]
    engine = make_engine(db_url)
    t0 = time.perf_counter()
    chunk = 50_000
    with engine.begin() as conn:
        for lo in range(0, n, chunk):
            conn.execute(
                text("INSERT INTO metric_points (run_id, name, step, seq, time, value) "
                     "VALUES (:r, 'loss', :s, :s, :t, :v)"),
                [{"r": run_id, "s": s, "t": 1e9 + s, "v": 5.0 / (1 + s / 1000) + (50.0 if s % 99_991 == 0 else 0.0)}
                 for s in range(lo, min(n, lo + chunk))])
        conn.execute(text("UPDATE runs SET metric_names = :m WHERE id = :r"), {"m": '["loss"]', "r": run_id})
    with Session(engine) as session:  # the rollups ingest would have kept
        rollups.rebuild_after(session, run_id, -1)
        session.commit()
    engine.dispose()
    print(f"query: bulk-loaded a {n:,}-point series in {time.perf_counter() - t0:.1f} s")
    return run_id


def time_query(client: httpx.Client, path: str, params: dict, reps: int) -> tuple[float, float, dict]:
    times, body = [], {}
    for _ in range(reps):
        t0 = time.perf_counter()
        r = client.get(path, params=params)
        times.append(time.perf_counter() - t0)
        r.raise_for_status()
        body = r.json()
    return statistics.median(times) * 1000, min(times) * 1000, body


def bench_query(base: str, db_url: str, n: int, reps: int) -> None:
    run_id = bulk_load_series(base, db_url, n)
    with httpx.Client(base_url=base, timeout=300) as client:
        path = f"/api/runs/{run_id}/series"
        for label, params in (("whole range", {"names": "loss", "buckets": 1000}),
                              ("window (a quarter)", {"names": "loss", "buckets": 1000, "start": n // 4,
                                                      "end": n // 2 - 1}),
                              ("whole range, 200 buckets", {"names": "loss", "buckets": 200})):
            median, best, body = time_query(client, path, params, reps)
            loss = body["series"]["loss"]
            assert body["downsampled"] and len(loss["step"]) <= params["buckets"]
            print(f"  GET /series {label}: median {median:.0f} ms, best {best:.0f} ms "
                  f"({len(loss['step'])} buckets, max kept {max(loss['max']):.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-events", type=int, default=200)
    parser.add_argument("--values", type=int, default=8)
    parser.add_argument("--offered", type=float, default=0, help="points/s: trainers logging on a schedule "
                        "instead of back-to-back posts (0: back to back)")
    parser.add_argument("--seconds", type=float, default=20, help="how long the --offered trainers log")
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temporary data dir")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="cliplab-bench-") as tmp:
        data_dir = Path(tmp)
        db_url = args.database_url or f"sqlite:///{data_dir / 'cliplab.db'}"
        port = free_port()
        server = start_server(data_dir, port, args.database_url)
        base = f"http://127.0.0.1:{port}"
        try:
            print(f"cliplab serve on {base}, database {db_url.split('@')[-1]}, {os.cpu_count()} CPUs")
            if args.offered:
                bench_paced(base, db_url, server.pid, args.runs, args.offered, args.seconds, args.values)
            else:
                bench_ingest(base, db_url, server.pid, args.runs, args.batches, args.batch_events, args.values)
            if args.points:  # 0: ingest only
                bench_query(base, db_url, args.points, args.reps)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
