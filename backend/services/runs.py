"""Run lifecycle: create, list, get, stop, resume, clone, delete.

Routes call these; every write goes through the single DB writer, and every change is published to the
run-list stream.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import String, cast, func, or_, select
from sqlmodel import Session

from backend.errors import Conflict, Invalid, NotFound
from backend.models import (
    ACTIVE_STATUSES,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    Run,
    RunClone,
    RunCreate,
    RunList,
    RunPublic,
    RunUpdate,
    Tags,
    resume_checkpoint,
)
from trainer.config import ConfigError, RunConfig, apply_overrides, config_errors

if TYPE_CHECKING:
    from backend.core import Services

SORT_KEYS = ("created_at", "name", "status", "step")
_TAGS = TypeAdapter(Tags)


def new_run_id(now: float) -> str:
    return f"r-{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(3)}"


def get_run(svc: "Services", run_id: str) -> Run:
    run = svc.read(lambda s: s.get(Run, run_id))
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def publish(svc: "Services", run: Run) -> RunPublic:
    public = RunPublic.of(run)
    svc.broadcaster.publish_run(public.model_dump(mode="json"))
    return public


# ---- validation ---------------------------------------------------------------------------------------


def _data_source_errors(cfg: RunConfig, data_dir: Path) -> list[dict[str, str]]:
    """data.train / data.val that a run launched from here could not read (unknown dataset, missing file)."""
    from trainer.data.sources import source_problem  # torch-free

    sources = {"data.train": (cfg.data.train, "train"), "data.val": (cfg.data.val, "val")}
    problems = {field: source_problem(spec, split, data_dir) for field, (spec, split) in sources.items() if spec}
    return [{"field": field, "message": problem} for field, problem in problems.items() if problem]


def validated_config(data: Any, name: str | None = None, tags: list[str] | None = None,
                     data_dir: Path | None = None) -> RunConfig:
    """A RunConfig from API input, or Invalid naming every bad field (relative to the config). With
    `data_dir`, data.train and data.val must also be readable by a run launched with that data directory."""
    if not isinstance(data, dict):
        raise Invalid.one("config", "must be an object of config sections")
    errors = config_errors(data)
    if errors:
        raise Invalid(errors)
    cfg = RunConfig.model_validate(data)
    if name is not None:
        cfg.name = name
    if tags is not None:
        cfg.tags = tags
    if not cfg.name.strip():
        raise Invalid.one("name", "must not be blank; leave it out to use the default name")
    cfg.tags = checked_tags(cfg.tags)
    errors = _data_source_errors(cfg, data_dir) if data_dir is not None else []
    if errors:
        raise Invalid(errors)
    try:
        json.dumps(cfg.to_dict(), allow_nan=False)
    except ValueError:
        raise Invalid.one("config", "contains NaN or Infinity, which JSON (and training) cannot use") from None
    return cfg


def checked_tags(tags: list[str]) -> list[str]:
    """The tags under the API's rule (models.Tags), or Invalid naming `tags` or the bad item (`tags.3`)."""
    try:
        return _TAGS.validate_python(tags)
    except ValidationError as err:
        raise Invalid([{"field": ".".join(["tags", *map(str, e["loc"])]), "message": e["msg"]}
                       for e in err.errors()]) from None


def _resources(svc: "Services", gpus: int, nproc: int | None) -> tuple[int, int]:
    nproc = nproc or max(gpus, 1)
    available = svc.launcher.gpu_indices
    if gpus > len(available):
        where = f"GPUs {available}" if available else "no GPUs"
        raise Invalid.one("gpus", f"asks for {gpus} GPUs but this server has {where}; use gpus=0 for a CPU run")
    if gpus > 0 and nproc != gpus:
        raise Invalid.one("nproc", f"must equal gpus ({gpus}): one process per GPU")
    return gpus, nproc


# ---- create / clone -------------------------------------------------------------------------------------


def _insert(svc: "Services", cfg: RunConfig, gpus: int, nproc: int, notes: str = "") -> RunPublic:
    now = time.time()

    def job(session: Session) -> Run:
        run_id = new_run_id(now)
        while session.get(Run, run_id) is not None:
            run_id = new_run_id(now)
        run = Run(
            id=run_id, name=cfg.name, status="queued", tags=list(cfg.tags), notes=notes, config=cfg.to_dict(), gpus=gpus,
            nproc=nproc, model=cfg.model.preset, dataset=cfg.data.train, created_at=now,
            run_dir=str(svc.settings.runs_dir / run_id),
        )
        session.add(run)
        return run

    return _write_and_queue(svc, job)


def _write_and_queue(svc: "Services", job: Callable[[Session], Run]) -> RunPublic:
    """Run a write that leaves a run queued, tell the streams, and let the launcher look at the queue."""
    run = svc.writer.call(job)
    public = publish(svc, run)
    svc.launcher.wake()
    return public


def create_run(svc: "Services", body: RunCreate) -> RunPublic:
    cfg = validated_config(body.config, body.name, body.tags, svc.settings.data_dir)
    gpus, nproc = _resources(svc, body.gpus, body.nproc)
    return _insert(svc, cfg, gpus, nproc, body.notes)


def _overridden(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():  # one at a time, so an error names the key that caused it
        try:
            config = apply_overrides(config, {key: value})
        except ConfigError as exc:
            raise Invalid.one(key, str(exc)) from None
    return config


def _as_sent(errors: list[dict[str, str]], overrides: dict[str, Any]) -> list[dict[str, str]]:
    """Name each error by the dotted key the user sent: {"nope.key": 1} fails at the unknown section `nope`."""
    out = []
    for error in errors:
        keys = [k for k in overrides if k.startswith(error["field"] + ".")]
        out.extend([{**error, "field": k} for k in keys] or [error])
    return out


def validated_overrides(config: dict[str, Any], overrides: dict[str, Any], name: str | None = None,
                        tags: list[str] | None = None, data_dir: Path | None = None) -> RunConfig:
    """`config` with dotted-key overrides applied and validated; Invalid names the override keys as sent."""
    try:
        return validated_config(_overridden(config, overrides), name, tags, data_dir)
    except Invalid as exc:
        raise Invalid(_as_sent(exc.errors, overrides)) from None


def clone_run(svc: "Services", run_id: str, body: RunClone) -> RunPublic:
    src = get_run(svc, run_id)
    name = body.name if body.name is not None else f"{src.name} (clone)"[:200]
    tags = body.tags if body.tags is not None else src.tags  # as the source run is tagged now (tags are editable)
    cfg = validated_overrides(src.config, body.overrides, name, tags, svc.settings.data_dir)
    gpus = src.gpus if body.gpus is None else body.gpus
    nproc = body.nproc if body.nproc is not None else (src.nproc if body.gpus is None else None)
    gpus, nproc = _resources(svc, gpus, nproc)
    return _insert(svc, cfg, gpus, nproc, body.notes)


def update_run(svc: "Services", run_id: str, body: RunUpdate) -> RunPublic:
    """Rename, re-tag or annotate a run in any state; the config it ran with stays as it was."""
    if body.name is not None and not body.name.strip():
        raise Invalid.one("name", "must not be blank")
    changes = body.model_dump(exclude_unset=True, exclude_none=True)

    def job(session: Session) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        for key, value in changes.items():
            setattr(run, key, value)
        session.add(run)
        return run

    return publish(svc, svc.writer.call(job))


# ---- list -----------------------------------------------------------------------------------------------


def list_runs(svc: "Services", status: str | None, name: str | None, tag: str | None, limit: int, offset: int,
              sort: str, q: str | None = None) -> RunList:
    statuses = [s for s in (status or "").split(",") if s]
    bad = [s for s in statuses if s not in RUN_STATUSES]
    if bad:
        raise Invalid.one("status", f"unknown status {bad[0]!r}; one of {', '.join(RUN_STATUSES)} (comma-separated)")
    key = sort.lstrip("-")
    if key not in SORT_KEYS:
        raise Invalid.one("sort", f"must be one of {', '.join(SORT_KEYS)}, optionally prefixed with '-'")
    query = select(Run)
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if name:
        query = query.where(func.lower(Run.name).contains(name.lower(), autoescape=True))
    if q and q.strip():
        text = q.strip().lower()
        query = query.where(or_(*(func.lower(column).contains(text, autoescape=True)
                                  for column in (Run.name, Run.notes, cast(Run.tags, String), Run.id))))
    if tag:
        # Tags are a JSON list; matching the quoted JSON string keeps this portable (SQLite and PostgreSQL).
        query = query.where(cast(Run.tags, String).contains(json.dumps(tag), autoescape=True))
    column = func.lower(Run.name) if key == "name" else getattr(Run, key)
    order = column.desc() if sort.startswith("-") else column.asc()

    def fetch(session: Session) -> RunList:
        total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
        rows = session.execute(query.order_by(order, Run.id).limit(limit).offset(offset)).scalars().all()
        return RunList(items=[RunPublic.of(r) for r in rows], total=total)

    return svc.read(fetch)


# ---- stop / resume / delete ------------------------------------------------------------------------------


def stop_run(svc: "Services", run_id: str) -> RunPublic:
    now = time.time()

    def job(session: Session) -> tuple[Run | None, bool]:
        run = session.get(Run, run_id)
        if run is None:
            return None, False
        if run.status == "queued":
            run.status, run.reason, run.finished_at = "stopped", "stopped before it started", now
        elif run.status in ("starting", "running", "lost"):
            run.status, run.stop_requested = "stopping", True
        elif run.status in TERMINAL_STATUSES:
            raise Conflict(f"run {run_id!r} is already {run.status}")
        else:  # stopping: asking again is harmless
            return run, False
        session.add(run)
        return run, run.status == "stopping"

    run, signal_it = svc.writer.call(job)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    if signal_it:
        svc.launcher.request_stop(run)
    return publish(svc, run)


def resume_run(svc: "Services", run_id: str, overrides: dict[str, Any]) -> RunPublic:
    run = get_run(svc, run_id)
    if run.status not in TERMINAL_STATUSES:
        raise Conflict(f"run {run_id!r} is {run.status}; only a stopped, failed or finished run can be resumed")
    if not resume_checkpoint(run.run_dir).is_file():
        raise Conflict(f"run {run_id!r} has no checkpoint to resume from (no checkpoints/latest in its run dir)")
    config = run.config
    if overrides:
        config = validated_overrides(run.config, overrides, data_dir=svc.settings.data_dir).to_dict()
    if run.status == "finished":
        _check_steps_left(run, config)

    def job(session: Session) -> Run:
        row = session.get(Run, run_id)
        if row is None:
            raise NotFound(f"run {run_id!r} not found")
        if row.status not in TERMINAL_STATUSES:
            raise Conflict(f"run {run_id!r} is {row.status}; only a stopped, failed or finished run can be resumed")
        row.config, row.status, row.resume = config, "queued", True
        row.reason = row.exit_code = row.finished_at = row.trainer_status = row.trainer_reason = None
        row.stop_requested = False
        session.add(row)
        return row

    return _write_and_queue(svc, job)


def _check_steps_left(run: Run, config: dict[str, Any]) -> None:
    """A finished run's checkpoint is at its last step: resuming it only makes sense with more steps."""
    done = run.config.get("train", {}).get("steps", run.step)
    wanted = config.get("train", {}).get("steps", done)
    if wanted <= done:
        raise Conflict(f"run {run.id!r} already finished its {done} steps; resume with overrides "
                       f'{{"train.steps": M}} where M > {done}')


def delete_run(svc: "Services", run_id: str) -> None:
    def job(session: Session) -> Run:
        run = session.get(Run, run_id)
        if run is None:
            raise NotFound(f"run {run_id!r} not found")
        if run.status in ACTIVE_STATUSES:
            raise Conflict(f"run {run_id!r} is {run.status}; stop it before deleting")
        session.delete(run)  # metric points, events and checkpoint rows go with it (ON DELETE CASCADE)
        return run

    run = svc.writer.call(job)
    svc.launcher.forget(run_id)
    run_dir = Path(run.run_dir).resolve()
    runs_root = svc.settings.runs_dir.resolve()
    # Only ever remove a directory the server made for this run.
    if run_dir.parent == runs_root and run_dir.name == run_id and run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
    svc.broadcaster.publish_run({"id": run_id, "deleted": True})
