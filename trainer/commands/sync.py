"""`cliplab sync RUN_DIR --server URL`: upload a run directory's events to a dashboard.

For a run that trained while its dashboard was unreachable (or without one): the events the server lacks
are sent from events.jsonl; the server stores them on (run id, seq), so a rerun adds nothing. A run never
registered with that server is registered first (as an attached run) and its id kept in <run_dir>/attach.json,
so a later sync or `cliplab train --resume latest --server URL` continues the same server run. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml

from contract.events import ENV_SERVER, EVENTS_FILE, read_events
from contract.run_dir import CONFIG_FILE
from trainer.attach import (
    ENV_ACCESS_TOKEN,
    AttachError,
    ServerClient,
    ServerUnreachable,
    read_attachment,
    write_attachment,
)

BATCH_EVENTS = 2000
BATCH_BYTES = 4 * 2**20  # well under the server's default 16 MiB body limit (matrix events carry thumbnails)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="the run directory (holding events.jsonl and config.yaml)")
    parser.add_argument("--server", metavar="URL", default=os.environ.get(ENV_SERVER),
                        help="the dashboard (default $CLIPLAB_SERVER); its access token comes from $CLIPLAB_TOKEN")


def batches(events: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Events in seq order, cut into bodies of at most BATCH_EVENTS events and about BATCH_BYTES bytes."""
    batch: list[dict[str, Any]] = []
    size = 0
    for event in events:
        n = len(json.dumps(event, separators=(",", ":")))
        if batch and (len(batch) >= BATCH_EVENTS or size + n > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(event)
        size += n
    if batch:
        yield batch


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise AttachError(f"{path}: cannot read the run's config ({exc}); sync registers the run with it") from None
    if not isinstance(config, dict):
        raise AttachError(f"{path}: not a run config (expected a mapping of config sections)")
    return config


def _register(client: ServerClient, run_dir: Path, saved: dict[str, str] | None) -> tuple[str, str]:
    """Register (or, with attach.json's entry `saved`, continue) the run as an upload; the events decide its
    state. The saved token shows the server that a moved directory is still the run's."""
    config = _run_config(run_dir)
    run_id = saved["run_id"] if saved else None
    try:
        found = client.register(config, run_dir, run_id=run_id, live=False,
                                run_token=saved.get("token") if saved else None)
    except AttachError as exc:
        if run_id is None or exc.status != 404:
            raise
        found = client.register(config, run_dir, live=False)  # deleted on the server: a new record
    write_attachment(run_dir, client.server, *found)
    return found


def upload(client: ServerClient, run_id: str, token: str, run_dir: Path) -> tuple[int, int]:
    """Send events.jsonl (streamed: a long run's file need not fit in memory); (accepted, duplicates)."""
    accepted = duplicates = 0
    for batch in batches(read_events(run_dir / EVENTS_FILE)):
        answer = client.request("POST", f"/api/runs/{run_id}/events", {"events": batch}, token=token)
        accepted += int(answer.get("accepted", 0))
        duplicates += int(answer.get("duplicates", 0))
    return accepted, duplicates


def sync(client: ServerClient, run_dir: Path) -> tuple[str, int, int]:
    """Upload what `client.server` lacks of `run_dir`; returns (server run id, accepted, duplicates)."""
    saved = read_attachment(run_dir, client.server)
    if saved is None or not isinstance(saved.get("token"), str):
        run_id, token = _register(client, run_dir, saved)
        return (run_id, *upload(client, run_id, token, run_dir))
    try:
        return (saved["run_id"], *upload(client, saved["run_id"], saved["token"], run_dir))
    except AttachError as exc:
        if exc.status not in (401, 403, 404):
            raise
    # The token was replaced (the run was continued from elsewhere) or the run deleted: register again.
    run_id, token = _register(client, run_dir, saved)
    return (run_id, *upload(client, run_id, token, run_dir))


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 synced, 1 server unreachable, 2 bad arguments or refused."""
    run_dir = Path(args.run_dir)
    if not (run_dir / EVENTS_FILE).is_file():
        print(f"cliplab sync: {run_dir} has no {EVENTS_FILE}: not a run directory", file=sys.stderr)
        return 2
    if not args.server:
        print(f"cliplab sync: no dashboard to sync to: pass --server URL or set {ENV_SERVER}", file=sys.stderr)
        return 2
    try:
        client = ServerClient(args.server, os.environ.get(ENV_ACCESS_TOKEN))
        run_id, accepted, duplicates = sync(client, run_dir)
    except ServerUnreachable as exc:
        print(f"cliplab sync: {exc}", file=sys.stderr)
        return 1
    except AttachError as exc:
        print(f"cliplab sync: {exc}", file=sys.stderr)
        return 2
    print(f"cliplab sync: {run_dir} -> {client.run_page(run_id)}: {accepted} new event(s), "
          f"{duplicates} already there")
    return 0
