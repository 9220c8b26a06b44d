"""Time and memory of a whole-series CSV export (GET /api/runs/{id}/metrics.csv) from a live server.

    python bench/bench_export.py                         # SQLite, then a throwaway PostgreSQL if installed
    python bench/bench_export.py --points 1000000 --reps 3 --no-postgres
    python bench/bench_export.py --cache /tmp/cliplab-bench-export   # build each database once, reuse it

The run is bench_series.py's (`loss` with --points points, --series - 1 others with --other-points each).
`python -m backend.serve` runs in a subprocess on that database; the export of `loss` alone is downloaded
--reps times with httpx. Prints seconds, MB/s and the server's peak RSS growth (VmHWM from /proc after the
downloads less VmHWM before them: what the export added to the most memory the server ever held), and checks
that the file has a header and one row per point.
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from backend.db import make_engine, migrate  # noqa: E402
from bench.bench_ingest import start_server  # noqa: E402
from bench.bench_series import RUN_ID, database_arguments, load  # noqa: E402
from bench.throwaway_postgres import throwaway_postgres  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def download(base_url: str, names: str) -> tuple[float, int, int]:
    """Seconds, bytes and lines of one export."""
    t0 = time.perf_counter()
    size = lines = 0
    with httpx.stream("GET", f"{base_url}/api/runs/{RUN_ID}/metrics.csv", params={"names": names},
                      timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            size += len(chunk)
            lines += chunk.count(b"\n")
    return time.perf_counter() - t0, size, lines


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_database(url: str, data_dir: Path, args: argparse.Namespace) -> None:
    engine = make_engine(url)
    migrate(engine)
    print(f"{engine.dialect.name}:")
    load(engine, args.points, args.series, args.other_points)
    engine.dispose()
    port = free_port()
    server = start_server(data_dir, port, url)
    try:
        before = peak_rss_mb(server.pid)
        for _ in range(args.reps):
            seconds, size, lines = download(f"http://127.0.0.1:{port}", "loss")
            assert lines == args.points + 1, f"{lines} lines for {args.points:,} points and the header"
            print(f"  {args.points:,} points: {seconds:5.2f} s, {size / 1e6:5.1f} MB, "
                  f"{size / 1e6 / seconds:5.1f} MB/s, {args.points / seconds / 1e3:5.0f} k rows/s")
        after = peak_rss_mb(server.pid)
        print(f"  server peak RSS {before:.0f} MB before the downloads, {after:.0f} MB after: "
              f"+{after - before:.1f} MB")
    finally:
        server.terminate()
        server.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    database_arguments(parser, series=3, reps=3)
    args = parser.parse_args()
    shape = f"{args.points}-{args.series}-{args.other_points}"
    with tempfile.TemporaryDirectory(prefix="cliplab-bench-export-") as tmp:
        folder = Path(tmp) if args.cache is None else args.cache
        data_dir = folder / f"data-{shape}"
        data_dir.mkdir(parents=True, exist_ok=True)
        bench_database(f"sqlite:///{data_dir}/cliplab.db", data_dir, args)
        if args.no_postgres:
            return
        with throwaway_postgres(None if args.cache is None else folder / f"pg-{shape}") as url:
            if url is None:
                print("postgresql: not installed, skipped")
            else:
                bench_database(url, data_dir, args)


if __name__ == "__main__":
    main()
