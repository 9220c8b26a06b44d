"""Server start: time from launch to the first 200 on GET /api/runs, and idle memory (RSS), for `cliplab serve`
for a bare FastAPI app with one route on uvicorn, and for that app plus SQLModel reading one SQLite table (the floor
of the stack cliplab is built on), measured alternately in one run.

    python bench/bench_server_start.py --reps 5

`cliplab serve` starts on an existing database (the usual start: no migration pending) and, once per rep, on
an empty data dir (the first start, which creates the schema). Prints medians and the ratios to the bare app.

Python may cache bytecode in every child (PYTHONDONTWRITEBYTECODE is dropped from their environment), and an
untimed first start writes it: an installed package has its bytecode compiled by pip, and a checkout has it
after the first start, so compiling cliplab's ~70 modules from source (~0.2 s here) is no part of a start.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BARE_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/api/runs")
def runs():
    return {"items": [], "total": 0}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
# The floor of the stack cliplab is required to use: the bare app plus SQLModel answering from one SQLite table.
# `cliplab serve` cannot start faster than this, whatever it imports of its own.
SQLMODEL_APP = """
import sys, uvicorn
from fastapi import FastAPI
from sqlmodel import Field, Session, SQLModel, create_engine, select
class Run(SQLModel, table=True):
    id: str = Field(primary_key=True)
    name: str
engine = create_engine("sqlite:///" + sys.argv[2])
SQLModel.metadata.create_all(engine)
app = FastAPI()
@app.get("/api/runs")
def runs() -> dict:
    with Session(engine) as session:
        items = [run.model_dump() for run in session.exec(select(Run))]
    return {"items": items, "total": len(items)}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_and_measure(cmd: list[str], port: int, env: dict[str, str], idle_s: float) -> tuple[float, float]:
    """Seconds from launch to the first 200 on /api/runs, and the RSS after `idle_s` of idling."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(timeout=2) as client:
            while True:
                try:
                    if client.get(f"http://127.0.0.1:{port}/api/runs").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.perf_counter() - t0 > 60:
                    raise SystemExit(f"{cmd} did not serve /api/runs")
                time.sleep(0.005)
        first_200 = time.perf_counter() - t0
        time.sleep(idle_s)
        return first_200, rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds to idle before reading the RSS")
    args = parser.parse_args()
    env = {**os.environ, "CLIPLAB_MAX_CPU_RUNS": "0"}
    env.pop("DATABASE_URL", None)
    env.pop("CLIPLAB_TOKEN", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    results: dict[str, list[tuple[float, float]]] = {"bare FastAPI": [], "FastAPI + SQLModel": [], "cliplab serve": [],
                                                     "cliplab first start": []}
    with tempfile.TemporaryDirectory(prefix="cliplab-start-") as tmp:
        existing = Path(tmp) / "existing"  # the untimed start below creates it and caches the bytecode
        serve = [sys.executable, "-m", "trainer", "serve", "--no-demo", "--log-level", "warning", "--port"]
        start_and_measure(serve + [str(port := free_port()), "--data-dir", str(existing)], port, env, 0)  # create it
        for rep in range(args.reps):
            port = free_port()
            results["bare FastAPI"].append(start_and_measure([sys.executable, "-c", BARE_APP, str(port)], port, env,
                                                             args.idle))
            port = free_port()
            floor_cmd = [sys.executable, "-c", SQLMODEL_APP, str(port), str(Path(tmp) / "floor.db")]
            results["FastAPI + SQLModel"].append(start_and_measure(floor_cmd, port, env, args.idle))
            port = free_port()
            results["cliplab serve"].append(start_and_measure(serve + [str(port), "--data-dir", str(existing)], port,
                                                              env, args.idle))
            port = free_port()
            fresh = Path(tmp) / f"fresh-{rep}"
            results["cliplab first start"].append(start_and_measure(serve + [str(port), "--data-dir", str(fresh)],
                                                                    port, env, args.idle))
    bare_s = statistics.median(r[0] for r in results["bare FastAPI"])
    bare_mb = statistics.median(r[1] for r in results["bare FastAPI"])
    print(f"server start, median of {args.reps} (load {os.getloadavg()[0]:.1f}):")
    for label, runs in results.items():
        s, mb = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        print(f"  {label:20s} first 200 on /api/runs {s:5.2f} s ({s / bare_s:4.2f}x bare), "
              f"idle RSS {mb:5.1f} MB ({mb / bare_mb:4.2f}x bare)")


if __name__ == "__main__":
    main()
