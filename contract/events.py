"""The event half of the run contract between trainer and backend (see docs/architecture.md).

An event is one JSON object: {"seq": int, "time": float, "kind": str, ...fields}. `seq` increases strictly
within a run, across resumes too. Rank 0 appends every event to <run_dir>/events.jsonl (the durable copy)
and may also POST batches to <server>/api/runs/<run_id>/events.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

EVENT_KINDS = ("status", "heartbeat", "metric", "eval", "matrix", "checkpoint", "log", "data_warning", "system")
RUN_STATUSES = ("starting", "running", "stopped", "finished", "failed")
EVENTS_FILE = "events.jsonl"

ENV_SERVER = "CLIPLAB_SERVER"
ENV_TOKEN = "CLIPLAB_RUN_TOKEN"
ENV_RUN_ID = "CLIPLAB_RUN_ID"


def read_events(path: str | os.PathLike, after_seq: int = -1) -> Iterator[dict[str, Any]]:
    """Yield the events of an events.jsonl with seq > after_seq; a torn last line is skipped."""
    p = Path(path)
    if not p.exists():
        return
    with p.open("r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a writer killed mid-line leaves a partial record; the next line is whole again
            if isinstance(event, dict) and isinstance(event.get("seq"), int) and event["seq"] > after_seq:
                yield event


def last_seq(path: str | os.PathLike) -> int:
    seq = -1
    for event in read_events(path):
        seq = max(seq, event["seq"])
    return seq
