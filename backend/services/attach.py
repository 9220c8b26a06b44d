"""Attached runs: trainers started outside the server (`cliplab train --server`, `cliplab sync`).

The server launched no process for them, so there is nothing here to watch or signal: their state follows
the status events their trainer sends (see ingest), a stop is a flag the trainer polls through
`GET /api/runs/{id}/control`, and one silent for `lost_after_s` becomes `lost` (the launcher's tick).
"""

from __future__ import annotations

import os
import posixpath
import time
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING

from sqlmodel import Session

from backend import attempts, store
from backend.errors import Conflict, Invalid, NotFound
from backend.models import Run, RunAttach, RunAttached, RunControl
from backend.services.ingest import grant_token, hash_token, token_matches
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


def _refuse_another_runs_registration(session: Session, run: Run, run_dir: str, run_token: str | None) -> None:
    """Conflict, before anything is changed, when a registration continuing `run` is not the run's own: a
    run_token that is another run's, or another run directory without the run's current token (a directory
    that moved shows it is the run's with the token its attach.json kept). Otherwise a second directory would
    take the run over: its run dir, config and host replaced, and its trainer's token void."""
    if run_token and token_matches(run_token, run.token_hash):
        return  # the run's own dir, wherever it is now
    holder = store.run_holding_token(session, hash_token(run_token)) if run_token else None
    if holder is not None:
        other = store.get_run(session, holder)
        raise Conflict(f"the run_token sent is the token of run {holder!r} (run dir {other.run_dir}), not of run "
                       f"{run.id!r} (run dir {run.run_dir}): nothing was changed; send run_id {holder!r} to "
                       f"continue that run, or leave run_id out to register {run_dir} as a run of its own")
    if _same_dir(run.run_dir, run_dir):
        return
    stale = " (the run_token sent is not the run's current token)" if run_token else ""
    raise Conflict(f"run {run.id!r} was attached from {run.run_dir}, not from {run_dir}: nothing was changed"
                   f"{stale}. Leave run_id out to register {run_dir} as a run of its own (cliplab: remove this "
                   f"server's entry from its attach.json); a directory moved from {run.run_dir} shows it is the "
                   "run's by sending run_token, the token its attach.json keeps")


def _same_dir(stored: str | None, run_dir: str) -> bool:
    """Whether a stored run dir (older servers stored it as sent) names `run_dir` (checked_run_dir's form)."""
    if stored is None:
        return True  # nothing to tell them apart by
    return stored == run_dir or (stored.startswith("/") and posixpath.normpath(stored) == run_dir)


def checked_run_dir(run_dir: str) -> str:
    """The run directory a trainer names, normalised (`/a/./b/` is `/a/b`), or Invalid unless absolute: the
    trainer sends its resolved path, and a relative one would be read from wherever the server runs."""
    if PureWindowsPath(run_dir).is_absolute() and not run_dir.startswith("/"):
        return run_dir
    if not run_dir.startswith("/"):
        raise Invalid.one("run_dir", f"{run_dir!r} is not an absolute path; send the run directory's full path "
                                     "on the trainer's host")
    return posixpath.normpath(run_dir)


def _spellings(svc: "Services", run_dir: str) -> list[str]:
    """How a launched run's row may spell `run_dir`: as sent, resolved, and, when it resolves into a folder
    the server makes run dirs in, under that folder's configured (maybe symlinked) name, which is what a
    launched run stores, while a trainer sends its resolved path."""
    real = Path(os.path.realpath(run_dir))
    out = [run_dir, str(real)]
    for root in (svc.settings.runs_dir, svc.settings.slurm_run_root()):
        if real.parent == Path(os.path.realpath(root)):
            out.append(str(root / real.name))
    return list(dict.fromkeys(out))


def _refuse_launched_run_dir(session: Session, run_dir: str, spellings: list[str]) -> None:
    """A run this server launched needs no attaching or sync (the server reads its events.jsonl itself);
    registering its directory again, under any spelling of it, would show the run twice."""
    launched = None
    for spelling in spellings:
        launched = launched or store.launched_run_in_dir(session, spelling)
    if launched is not None:
        raise Conflict(f"{run_dir} is the run directory of run {launched.id!r}, which this server launched; "
                       "its events reach the server without attaching or syncing it")


def attach_run(svc: "Services", body: RunAttach) -> RunAttached:
    """Register an attached run (or continue one: `run_id`, from its own run dir or with its `run_token`) and
    grant it a fresh ingest token.

    `live` (a trainer starts now) makes the run `starting`; an upload (`live=False`) leaves the state to the
    events it sends. The config is validated, but not its data paths: they name files on the trainer's host.
    """
    cfg = validated_config(body.config)
    run_dir = checked_run_dir(body.run_dir)
    spellings = _spellings(svc, run_dir) if body.run_id is None else []
    now = time.time()
    token = ""

    def job(session: Session) -> Run:
        nonlocal token
        if body.run_id is not None:
            run = _existing_attached(session, body.run_id)
            _refuse_another_runs_registration(session, run, run_dir, body.run_token)
        else:
            _refuse_launched_run_dir(session, run_dir, spellings)
            run = Run(id=store.unused_run_id(session, now), name=cfg.name, status="starting", created_at=now,
                      attached=True, last_seen=now)
            run.tags = list(cfg.tags)  # later registrations keep what the dashboard renamed or re-tagged
        run.config = cfg.to_dict()
        run.model, run.dataset = cfg.model.preset, cfg.data.train
        run.nproc, run.gpus, run.run_dir, run.attached_host = body.nproc, body.gpus, run_dir, body.host or None
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
