"""Attached runs: trainers started outside the server (`cliplab train --server`, `cliplab sync`).

The server launched no process for them, so there is nothing here to watch or signal: their state follows
the status events their trainer sends (see ingest), a stop is a flag the trainer polls through
`GET /api/runs/{id}/control`, and one silent for `lost_after_s` becomes `lost` (the launcher's tick).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlmodel import Session

from backend import attempts, store
from backend.errors import Conflict, NotFound
from backend.models import Run, RunAttach, RunAttached, RunControl
from backend.services.ingest import grant_token
from backend.services.runs import validated_config

if TYPE_CHECKING:
    from backend.services.container import Services


def _existing_attached(session: Session, run_id: str) -> Run:
    run = store.get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found on this server; leave run_id out to register the run anew")
    if not run.attached:
        raise Conflict(f"run {run_id!r} was launched by this server, not attached; resume it from the dashboard "
                       f"or with POST /api/runs/{run_id}/resume")
    return run


def _refuse_launched_run_dir(session: Session, run_dir: str) -> None:
    """A run this server launched needs no attaching or sync (the server reads its events.jsonl itself);
    registering its directory again would show the run twice."""
    launched = store.launched_run_in_dir(session, run_dir)
    if launched is not None:
        raise Conflict(f"{run_dir} is the run directory of run {launched.id!r}, which this server launched; "
                       "its events reach the server without attaching or syncing it")


def attach_run(svc: "Services", body: RunAttach) -> RunAttached:
    """Register an attached run (or continue one: `run_id`) and grant it a fresh ingest token.

    `live` (a trainer starts now) makes the run `starting`; an upload (`live=False`) leaves the state to the
    events it sends. The config is validated, but not its data paths: they name files on the trainer's host.
    """
    cfg = validated_config(body.config)
    now = time.time()
    token = ""

    def job(session: Session) -> Run:
        nonlocal token
        if body.run_id is not None:
            run = _existing_attached(session, body.run_id)
        else:
            _refuse_launched_run_dir(session, body.run_dir)
            run = Run(id=store.unused_run_id(session, now), name=cfg.name, status="starting", created_at=now,
                      attached=True, last_seen=now)
            run.tags = list(cfg.tags)  # later registrations keep what the dashboard renamed or re-tagged
        run.config = cfg.to_dict()
        run.model, run.dataset = cfg.model.preset, cfg.data.train
        run.nproc, run.gpus, run.run_dir, run.attached_host = body.nproc, body.gpus, body.run_dir, body.host or None
        if body.live:
            # An attempt still open was lost without a final status; it ends where the new one starts.
            run.attempts = attempts.closed(run.attempts, now, run.status, run.reason, None)
            run.start_attempt(now)
        token = grant_token(run)
        return store.save_run(session, run)

    run = svc.writer.call(job)
    return RunAttached(run=svc.publish_run(run), token=token)


def control(run: Run) -> RunControl:
    """What an attached trainer polls: its run's status and whether the dashboard asked it to stop."""
    return RunControl(status=run.status, stop_requested=run.stop_requested)
