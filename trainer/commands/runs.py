"""`cliplab runs [RUNS_DIR | --server URL]`: the runs of a runs folder (read from their run directories) or of a
`cliplab serve` (through its REST API), newest first, with status, progress and key metrics. Torch-free."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from contract.events import EVENTS_FILE
from trainer.commands.flags import positive_int
from trainer.run_summary import RunSummary, format_duration, format_value, running_s, summarize_run_dir
from trainer.training.run_lock import is_locked

# A run silent this long, with no training holding its folder, ended without a last word: as the dashboard
# marks it (backend Settings.lost_after_s), with heartbeats every 10 s keeping live runs well inside it.
LOST_AFTER_S = 120.0
COLUMNS = ("RUN", "NAME", "STATUS", "STEP", "LOSS", "BEST", "DURATION", "UPDATED")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs_dir", nargs="?", default="runs",
                        help="folder holding run directories (default ./runs, where `cliplab train` writes), or one "
                        "run directory")
    parser.add_argument("--server", metavar="URL", help="list the runs of a `cliplab serve` instead, e.g. "
                        "http://127.0.0.1:8000 (token from --token or $CLIPLAB_TOKEN when it needs one)")
    parser.add_argument("--token", help="access token for --server (default $CLIPLAB_TOKEN)")
    parser.add_argument("--limit", type=positive_int, default=50, help="show at most this many runs (default 50)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")


def _ago(t: float | None, now: float) -> str:
    return f"{format_duration(now - t)} ago" if t else "-"


def _best_cell(best: dict[str, Any], metric: str | None) -> str:
    """The metric that selects the best checkpoint (val/loss unless configured), else the first eval metric."""
    name = metric if metric in best else next(iter(best), None)
    if name is None:
        return "-"
    value = best[name][0] if isinstance(best[name], (list, tuple)) else best[name]
    return f"{name} {format_value(value)}"


def folder_rows(runs_dir: Path, now: float) -> list[dict[str, Any]]:
    """One row per run directory under `runs_dir` (or for `runs_dir` itself), newest activity first."""
    dirs = [runs_dir] if (runs_dir / EVENTS_FILE).is_file() else [
        d for d in runs_dir.iterdir() if d.is_dir() and (d / EVENTS_FILE).is_file()]
    rows = []
    for run_dir in dirs:
        s = summarize_run_dir(run_dir)
        if s.unreadable:
            print(f"cliplab runs: warning: {s.unreadable}", file=sys.stderr)
        rows.append({"run": run_dir.name, "name": s.name or "-", "status": _status(s, now), "step": s.step,
                     "total_steps": s.total_steps, "loss": s.latest.get("loss"), "best": _best_cell(s.best, s.best_metric),
                     "duration_s": running_s(s), "updated": s.last_time, "run_dir": str(run_dir)})
    return sorted(rows, key=lambda r: r["updated"] or 0, reverse=True)


def _status(summary: RunSummary, now: float) -> str:
    """The last status event's, but `lost` for a run that says it trains while no training holds its folder
    and it has been silent for longer than the dashboard waits (a killed process writes no last word)."""
    if (summary.status in ("starting", "running") and now - (summary.last_time or now) > LOST_AFTER_S
            and not is_locked(summary.run_dir)):
        return "lost"
    return summary.status or "-"


def _fetch_runs(server: str, token: str | None, limit: int) -> list[dict[str, Any]]:
    url = f"{server.rstrip('/')}/api/runs?" + urllib.parse.urlencode({"limit": max(1, min(limit, 500))})
    headers = {"Accept": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=15) as resp:
        return json.loads(resp.read())["items"]


def server_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in runs:
        best_metric = ((r.get("config") or {}).get("checkpoint") or {}).get("best_metric", "val/loss")
        duration = r.get("duration_s")
        if duration is None and r.get("started_at") and r.get("finished_at"):
            duration = r["finished_at"] - r["started_at"]
        rows.append({"run": r["id"], "name": r.get("name") or "-", "status": r["status"], "step": r.get("step") or 0,
                     "total_steps": r.get("total_steps"), "loss": (r.get("latest") or {}).get("loss"),
                     "best": _best_cell(r.get("best") or {}, best_metric), "duration_s": duration,
                     "updated": r.get("finished_at") or r.get("started_at") or r.get("created_at"),
                     "run_dir": r.get("run_dir")})
    return rows


def format_table(rows: list[dict[str, Any]], now: float) -> str:
    cells = [COLUMNS] + [(
        r["run"], r["name"], r["status"],
        f"{r['step']}/{r['total_steps']}" if r["total_steps"] else str(r["step"]),
        format_value(r["loss"]) if isinstance(r["loss"], (int, float)) else "-",
        r["best"], format_duration(r["duration_s"]), _ago(r["updated"], now)) for r in rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _rows(args: argparse.Namespace, now: float) -> list[dict[str, Any]]:
    """Raises ValueError with the message for the user when the folder or server cannot be read."""
    if args.server:
        token = args.token or os.environ.get("CLIPLAB_TOKEN")
        try:
            return server_rows(_fetch_runs(args.server, token, args.limit))
        except urllib.error.HTTPError as exc:
            hint = "; pass --token or set CLIPLAB_TOKEN" if exc.code in (401, 403) else ""
            raise ValueError(f"--server {args.server}: HTTP {exc.code} {exc.reason}{hint}") from None
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            raise ValueError(f"--server {args.server}: cannot list runs ({getattr(exc, 'reason', exc)}); "
                             "is `cliplab serve` running there?") from None
    runs_dir = Path(args.runs_dir).expanduser()
    if not runs_dir.is_dir():
        raise ValueError(f"{runs_dir} is not a folder; pass the folder `cliplab train` writes runs to "
                         "(its output_dir, ./runs by default) or --server URL")
    return folder_rows(runs_dir, now)[: args.limit]


def run(args: argparse.Namespace) -> int:
    now = time.time()
    try:
        rows = _rows(args, now)
    except ValueError as exc:
        print(f"cliplab runs: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no runs in {args.server or args.runs_dir}")
    else:
        print(format_table(rows, now))
    return 0
