"""Run lifecycle: create, list, get, stop, resume, clone, delete.

Routes call these; every write goes through the single DB writer, and every change is published to the
run-list stream.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session

from backend import attempts, store
from backend.errors import Conflict, Invalid, NotFound
from backend.models import (
    ACTIVE_STATUSES,
    RUN_STATUSES,
    TERMINAL_STATUSES,
    ConfigValidate,
    Run,
    RunClone,
    RunCreate,
    RunList,
    RunPublic,
    RunUpdate,
    SlurmRequest,
    Tags,
    resume_checkpoint,
)
from backend.services import run_files
from backend.services.readable import outside_readable_errors
from backend.slurm_settings import check_name, check_time
from contract.config import (
    OverrideError,
    RunConfig,
    apply_overrides,
    config_errors,
    plain_message,
    resume_change_errors,
)
from contract.run_dir import BEST, CHECKPOINTS_DIR, LATEST, step_of

if TYPE_CHECKING:
    from backend.services.container import Services

SORT_KEYS = ("created_at", "name", "status", "step")
_TAGS = TypeAdapter(Tags)
MAX_OVERRIDES = 200  # dotted keys in one clone or resume
NEW_RUN = "new-run"  # stands for the directory of a run not created yet, when checking paths relative to it


def stored_run(session: Session, run_id: str) -> Run:
    """The run `run_id`, or NotFound."""
    run = store.get_run(session, run_id)
    if run is None:
        raise NotFound(f"run {run_id!r} not found")
    return run


def get_run(svc: "Services", run_id: str) -> Run:
    return svc.read(stored_run, run_id)


def token_hash(svc: "Services", run_id: str) -> str | None:
    """The hash of run `run_id`'s trainer token (None: no trainer may post), or NotFound."""
    row = svc.read(store.run_token_hash, run_id)
    if row is None:
        raise NotFound(f"run {run_id!r} not found")
    return row[0]


# ---- validation ---------------------------------------------------------------------------------------


def _data_source_errors(cfg: RunConfig, data_dir: Path, readable: list[Path] | None = None,
                        run_dir: Path | None = None) -> list[dict[str, str]]:
    """data.train / data.val / model.pretrained that a run launched from here (in `run_dir`, by default a
    new local run's) may not or could not read: paths outside the readable roots first (so nothing is said
    about files there), then unknown datasets and missing files."""
    from contract.sources import source_problem

    outside = outside_readable_errors(cfg, readable or [data_dir], run_dir or data_dir / "runs" / NEW_RUN)
    refused = {e["field"] for e in outside}
    sources = {"data.train": (cfg.data.train, "train"), "data.val": (cfg.data.val, "val")}
    problems = {field: source_problem(spec, split, data_dir) for field, (spec, split) in sources.items()
                if spec and field not in refused}
    return outside + [{"field": field, "message": problem} for field, problem in problems.items() if problem]


def validated_config(data: Any, name: str | None = None, tags: list[str] | None = None,
                     data_dir: Path | None = None, readable: list[Path] | None = None,
                     run_dir: Path | None = None) -> RunConfig:
    """A RunConfig from API input, or Invalid naming every bad field (relative to the config). With
    `data_dir`, data.train and data.val must also be readable by a run launched with that data directory
    (and a relative model.pretrained from `run_dir`, where its trainer will run)."""
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
    errors = _data_source_errors(cfg, data_dir, readable, run_dir) if data_dir is not None else []
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
        raise Invalid([{"field": ".".join(["tags", *map(str, e["loc"])]), "message": plain_message(e)}
                       for e in err.errors()]) from None


def edited_tags(tags: list[str], add: list[str], remove: list[str]) -> list[str]:
    """`tags` without those in `remove`, then those of `add` it lacks, at the end in their order."""
    kept = [t for t in tags if t not in remove]
    return kept + [t for t in dict.fromkeys(add) if t not in kept]


def _resources(svc: "Services", gpus: int, nproc: int | None) -> tuple[int, int]:
    nproc = nproc or max(gpus, 1)
    available = svc.launcher.gpu_indices
    if gpus > len(available):
        where = f"GPUs {available}" if available else "no GPUs"
        raise Invalid.one("gpus", f"asks for {gpus} GPUs but this server has {where}; use gpus=0 for a CPU run")
    if gpus > 0 and nproc != gpus:
        raise Invalid.one("nproc", f"must equal gpus ({gpus}): one process per GPU")
    return gpus, nproc


def _executor(svc: "Services", name: str | None) -> str:
    name = name or svc.settings.default_executor
    if name not in svc.settings.executors:
        raise Invalid.one("executor", f"{name!r} is not an executor of this server; it runs "
                                      f"{', '.join(svc.settings.executors)} (cliplab serve --executor NAME)")
    return name


def _slurm_request(svc: "Services", req: SlurmRequest) -> dict[str, Any]:
    """The SLURM resources of a run with the server's defaults filled in, or Invalid naming the field."""
    cfg = svc.settings.slurm
    partition = req.partition or cfg.partition
    allowed = cfg.allowed_partitions()
    if req.partition is not None and req.partition not in allowed:
        choices = f"one of {', '.join(allowed)}" if allowed else "none: this server uses the cluster's default"
        raise Invalid.one("slurm.partition", f"unknown partition {req.partition!r}; allowed: {choices}")
    if req.nodes > cfg.max_nodes:
        raise Invalid.one("slurm.nodes", f"asks for {req.nodes} nodes; this server allows at most {cfg.max_nodes}")
    if req.gpus_per_node > cfg.max_gpus_per_node:
        raise Invalid.one("slurm.gpus_per_node", f"asks for {req.gpus_per_node} GPUs per node; this server "
                                                 f"allows at most {cfg.max_gpus_per_node}")
    for field, value, check in (("slurm.qos", req.qos, check_name), ("slurm.time_limit", req.time_limit, None)):
        try:
            if value is not None:
                check(value, "qos") if check else check_time(value)
        except ValueError as exc:
            raise Invalid.one(field, str(exc)) from None
    return {"partition": partition, "nodes": req.nodes, "gpus_per_node": req.gpus_per_node,
            "cpus_per_task": req.cpus_per_task or cfg.cpus_per_task, "time_limit": req.time_limit or cfg.time_limit,
            "qos": req.qos or cfg.qos}


class Placement(NamedTuple):
    """Where a new run trains: its Run fields (`executor`, `slurm`), GPUs and processes."""

    fields: dict[str, Any]
    gpus: int
    nproc: int


def _placement(svc: "Services", executor: str | None, slurm: SlurmRequest | None, gpus: int,
               nproc: int | None) -> tuple[dict[str, Any], int, int]:
    """(Run fields saying where it trains, gpus, nproc) for a new run."""
    name = _executor(svc, executor)
    if name != "slurm":
        if slurm is not None:
            raise Invalid.one("slurm", "only for runs with executor slurm")
        gpus, nproc = _resources(svc, gpus, nproc)
        return {"executor": name}, gpus, nproc
    if gpus or (nproc or 1) != 1:
        raise Invalid.one("gpus", "a SLURM run takes its GPUs from slurm.gpus_per_node and slurm.nodes")
    request = _slurm_request(svc, slurm or SlurmRequest())
    per_node = request["gpus_per_node"]
    return {"executor": name, "slurm": request}, request["nodes"] * per_node, request["nodes"] * max(per_node, 1)


# ---- create / clone -------------------------------------------------------------------------------------


def _run_root(svc: "Services", executor: str) -> Path:
    """The folder a new run's directory goes in, which its trainer runs in (SLURM: --chdir)."""
    return svc.settings.slurm_run_root() if executor == "slurm" else svc.settings.runs_dir


def _insert(svc: "Services", cfg: RunConfig, gpus: int, nproc: int, placement: dict[str, Any] | None = None,
            notes: str = "") -> RunPublic:
    return insert_runs(svc, [cfg], Placement(placement or {"executor": "local"}, gpus, nproc), notes)[0]


def insert_runs(svc: "Services", cfgs: list[RunConfig], where: Placement, notes: str = "") -> list[RunPublic]:
    """Queue a run per config, all in one write (all or none are stored), created in their order."""
    now = time.time()
    root = _run_root(svc, where.fields["executor"])

    def job(session: Session) -> list[Run]:
        made = []
        for order, cfg in enumerate(cfgs):
            run_id = store.unused_run_id(session, now)
            made.append(store.save_run(session, Run(
                id=run_id, name=cfg.name, status="queued", tags=list(cfg.tags), notes=notes, config=cfg.to_dict(),
                gpus=where.gpus, nproc=where.nproc, model=cfg.model.preset, dataset=cfg.data.train,
                created_at=now + order * 1e-6, run_dir=str(root / run_id), **where.fields,
            )))
        return made

    public = [svc.publish_run(run) for run in svc.writer.call(job)]
    svc.launcher.wake()
    return public


def _write_and_queue(svc: "Services", job: Callable[[Session], Run]) -> RunPublic:
    """Run a write that leaves a run queued, tell the streams, and let the launcher look at the queue."""
    public = svc.publish_run(svc.writer.call(job))
    svc.launcher.wake()
    return public


def check_cpu_limits(cfg: RunConfig, gpus: int, nproc: int) -> None:
    """A CPU run uses at most this machine's cores for its processes and a bounded number of loader
    workers each: more only thrashes the machine the dashboard runs on."""
    if gpus > 0:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if nproc > cores:
        raise Invalid.one("nproc", f"{nproc} processes for a CPU run, but this machine has {cores} CPU cores; "
                                   f"use at most {cores}")
    max_workers = max(4, 2 * cores)
    if cfg.data.num_workers > max_workers:
        raise Invalid.one("data.num_workers", f"{cfg.data.num_workers} loader workers per process; "
                          f"a CPU run on this {cores}-core machine may use at most {max_workers}")


def check_config(svc: "Services", body: ConfigValidate) -> RunConfig:
    """The new-run form's check: the config as `create_run` validates it, and with `body.gpus` the limits of
    a run on this machine too, so a config the form calls valid is not refused on Start."""
    cfg = validated_config(body.config, data_dir=svc.settings.data_dir, readable=svc.settings.readable_roots)
    executor = _executor(svc, body.executor) if body.executor is not None or body.gpus is not None else None
    if body.gpus is not None and executor == "local":  # the GPUs this server has, one process per GPU
        gpus, nproc = _resources(svc, body.gpus, body.nproc)
        check_cpu_limits(cfg, gpus, nproc)
    return cfg


def new_run_placement(svc: "Services", executor: str | None, slurm: SlurmRequest | None, gpus: int,
                      nproc: int | None) -> Placement:
    """Where a new run would train, as `POST /api/runs` decides it; Invalid names a field the server refuses."""
    return Placement(*_placement(svc, executor, slurm, gpus, nproc))


def checked_new_config(svc: "Services", where: Placement, data: Any, name: str | None = None,
                       tags: list[str] | None = None) -> RunConfig:
    """The config of a new run placed `where`, checked as `POST /api/runs` checks it (what
    `/api/configs/validate` checks, from the run's own folder and with its resources); Invalid names every bad
    field."""
    cfg = validated_config(data, name, tags, svc.settings.data_dir, svc.settings.readable_roots,
                           _run_root(svc, where.fields["executor"]) / NEW_RUN)
    if where.fields["executor"] == "local":  # a SLURM run uses the cluster's cores, not this machine's
        check_cpu_limits(cfg, where.gpus, where.nproc)
    return cfg


def create_run(svc: "Services", body: RunCreate) -> RunPublic:
    where = new_run_placement(svc, body.executor, body.slurm, body.gpus, body.nproc)
    cfg = checked_new_config(svc, where, body.config, body.name, body.tags)
    return insert_runs(svc, [cfg], where, body.notes)[0]


def _overridden(config: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`config` with the overrides applied, in one pass (one per key cost minutes for a request of many keys)."""
    if len(overrides) > MAX_OVERRIDES:
        raise Invalid.one("overrides", f"{len(overrides)} keys; at most {MAX_OVERRIDES} (a config has far "
                                       "fewer fields)")
    try:
        return apply_overrides(config, overrides)
    except OverrideError as exc:
        raise Invalid.one(exc.key, str(exc)) from None


def _as_sent(errors: list[dict[str, str]], overrides: dict[str, Any]) -> list[dict[str, str]]:
    """Name each error by the dotted key the user sent: {"nope.key": 1} fails at the unknown section `nope`."""
    out = []
    for error in errors:
        keys = [k for k in overrides if k.startswith(error["field"] + ".")]
        out.extend([{**error, "field": k} for k in keys] or [error])
    return out


def validated_overrides(config: dict[str, Any], overrides: dict[str, Any], name: str | None = None,
                        tags: list[str] | None = None, data_dir: Path | None = None,
                        readable: list[Path] | None = None, run_dir: Path | None = None) -> RunConfig:
    """`config` with dotted-key overrides applied and validated; Invalid names the override keys as sent."""
    try:
        return validated_config(_overridden(config, overrides), name, tags, data_dir, readable, run_dir)
    except Invalid as exc:
        raise Invalid(_as_sent(exc.errors, overrides)) from None


def clone_run(svc: "Services", run_id: str, body: RunClone) -> RunPublic:
    src = get_run(svc, run_id)
    name = body.name if body.name is not None else f"{src.name} (clone)"[:200]
    tags = body.tags if body.tags is not None else src.tags  # as the source run is tagged now (tags are editable)
    cfg = validated_overrides(src.config, body.overrides, name, tags, svc.settings.data_dir,
                              svc.settings.readable_roots, _run_root(svc, src.executor) / NEW_RUN)
    if src.executor == "slurm":  # the same SLURM resources
        placement, gpus, nproc = _placement(svc, "slurm", SlurmRequest(**src.slurm), 0, None)
        return _insert(svc, cfg, gpus, nproc, placement, body.notes)
    gpus = src.gpus if body.gpus is None else body.gpus
    nproc = body.nproc if body.nproc is not None else (src.nproc if body.gpus is None else None)
    gpus, nproc = _resources(svc, gpus, nproc)
    check_cpu_limits(cfg, gpus, nproc)
    return _insert(svc, cfg, gpus, nproc, notes=body.notes)

def update_run(svc: "Services", run_id: str, body: RunUpdate) -> RunPublic:
    """Rename, re-tag or annotate a run in any state; the config it ran with stays as it was."""
    if body.name is not None and not body.name.strip():
        raise Invalid.one("name", "must not be blank")
    if body.tags is not None and (body.add_tags or body.remove_tags):
        raise Invalid.one("tags", "send the whole list (tags) or edits of it (add_tags, remove_tags), not both")
    changes = body.model_dump(exclude_unset=True, exclude_none=True, exclude={"add_tags", "remove_tags"})

    def job(session: Session) -> Run:
        run = stored_run(session, run_id)
        for key, value in changes.items():
            setattr(run, key, value)
        if body.add_tags or body.remove_tags:
            run.tags = checked_tags(edited_tags(run.tags, body.add_tags or [], body.remove_tags or []))
        return store.save_run(session, run)

    return svc.publish_run(svc.writer.call(job))


# ---- list -----------------------------------------------------------------------------------------------


def list_runs(svc: "Services", status: str | None, name: str | None, tag: str | None, limit: int, offset: int,
              sort: str, q: str | None = None) -> RunList:
    statuses = [s for s in (status or "").split(",") if s]
    bad = [s for s in statuses if s not in RUN_STATUSES]
    if bad:
        raise Invalid.one("status", f"unknown status {bad[0]!r}; one of {', '.join(RUN_STATUSES)} (comma-separated)")
    key = sort.removeprefix("-")
    if key not in SORT_KEYS:
        raise Invalid.one("sort", f"must be one of {', '.join(SORT_KEYS)}, optionally prefixed with '-'")
    total, rows = svc.read(store.run_page, statuses, name, tag, q, key, sort.startswith("-"), limit, offset)
    return RunList(items=[RunPublic.of(r) for r in rows], total=total)


# ---- stop / resume / delete ------------------------------------------------------------------------------


def stop_run(svc: "Services", run_id: str) -> RunPublic:
    now = time.time()

    def job(session: Session) -> tuple[Run, bool]:
        run = stored_run(session, run_id)
        if run.status == "queued" and run.slurm_job_id is None:
            run.status, run.reason, run.finished_at = "stopped", "stopped before it started", now
        elif run.attached and run.status == "lost":
            # Nothing here to wait for; the flag still stops the trainer if it comes back and polls.
            run.status, run.stop_requested, run.finished_at = "stopped", True, now
            run.reason = "stopped while lost: the attached trainer was not heard from"
            run.attempts = attempts.closed(run.attempts, run.last_seen or now, "stopped", run.reason, None)
        elif run.status in ("queued", "starting", "running", "lost"):  # queued: a job waiting in SLURM
            run.status, run.stop_requested = "stopping", True
        elif run.status in TERMINAL_STATUSES:
            raise Conflict(f"run {run_id!r} is already {run.status}")
        else:  # stopping: asking again is harmless
            return run, False
        return store.save_run(session, run), run.status == "stopping"

    run, signal_it = svc.writer.call(job)
    if signal_it and not run.attached:  # an attached trainer polls GET /api/runs/{id}/control instead
        svc.launcher.request_stop(run)
    return svc.publish_run(run)


def resume_run(svc: "Services", run_id: str, overrides: dict[str, Any], checkpoint: str | None = None) -> RunPublic:
    """Queue a stopped, failed or finished run again; its trainer continues from `checkpoint` (a complete step
    directory of the run, or `latest`/`best`; default latest) in the same run directory."""
    run = get_run(svc, run_id)
    if run.attached:
        raise Conflict(f"run {run_id!r} was started outside this server (attached); resume it where it ran: "
                       f"cliplab train --resume {_by_hand_spec(run, checkpoint)} --run-dir {run.run_dir} "
                       "--server <this server's URL>")
    if run.status not in TERMINAL_STATUSES:
        raise Conflict(f"run {run_id!r} is {run.status}; only a stopped, failed or finished run can be resumed")
    start = _resume_start(run, checkpoint)
    config = _resumed_config(svc, run, overrides)
    _check_steps_left(run, config, start)

    def job(session: Session) -> Run:
        row = stored_run(session, run_id)
        if row.status not in TERMINAL_STATUSES:
            raise Conflict(f"run {run_id!r} is {row.status}; only a stopped, failed or finished run can be resumed")
        row.config, row.status, row.resume, row.resume_from = config, "queued", True, start
        row.slurm_job_id = row.slurm_nodelist = None  # a new attempt is a new job
        row.clear_outcome()
        return store.save_run(session, row)

    return _write_and_queue(svc, job)


def _by_hand_spec(run: Run, checkpoint: str | None) -> str:
    """What an attached run's `cliplab train --resume` takes to continue from `checkpoint`."""
    if checkpoint == BEST or (checkpoint is not None and step_of(checkpoint) is not None):
        return str(Path(run.run_dir) / CHECKPOINTS_DIR / checkpoint)
    return LATEST


def _resume_start(run: Run, checkpoint: str | None) -> str | None:
    """The step directory a resume starts in when one was picked (None: `latest`, the trainer's default), or
    Invalid naming the run's complete ones, or Conflict when there is no latest to resume from."""
    if checkpoint not in (None, LATEST):
        return run_files.resume_point(Path(run.run_dir), checkpoint)
    if resume_checkpoint(run.run_dir) is None:
        raise Conflict(f"run {run.id!r} has no checkpoint to resume from (no checkpoints/latest in its run dir)")
    return None


def _resumed_config(svc: "Services", run: Run, overrides: dict[str, Any]) -> dict[str, Any]:
    """The config a resume trains with: the run's, with `overrides` applied and checked (Invalid names them)."""
    config = run.config
    if overrides:
        cfg = validated_overrides(run.config, overrides, data_dir=svc.settings.data_dir,
                                  readable=svc.settings.readable_roots, run_dir=Path(run.run_dir))
        # Refused here, before the run's config is replaced and its trainer fails on the checkpoint.
        fixed = [] if config_errors(run.config) else resume_change_errors(RunConfig.model_validate(run.config), cfg)
        if fixed:
            raise Invalid(fixed)
        if run.executor == "local":  # a SLURM run uses the cluster's cores, not this machine's
            check_cpu_limits(cfg, run.gpus, run.nproc)
        return cfg.to_dict()
    stored = config_errors(config)  # the config rules may have changed since the run was created: then a
    if stored:                      # resume needs overrides that fix what a newer rule refuses
        raise Invalid(stored)
    outside = outside_readable_errors(RunConfig.model_validate(config), svc.settings.readable_roots,
                                      Path(run.run_dir))  # and so may the readable folders
    if outside:
        raise Invalid(outside)
    return config


def _check_steps_left(run: Run, config: dict[str, Any], start: str | None) -> None:
    """A resume must have steps to train: past the picked checkpoint's step, or, for a finished run resumed from
    its latest checkpoint (at its last step), past the steps it finished."""
    done = run.config.get("train", {}).get("steps", run.step)
    wanted = config.get("train", {}).get("steps", done)
    if start is not None:
        at = step_of(start) or 0
        if wanted <= at:
            raise Conflict(f"checkpoint {start} of run {run.id!r} is at step {at} and train.steps is {wanted}: "
                           f'nothing left to train; resume with overrides {{"train.steps": M}} where M > {at}')
    elif run.status == "finished" and wanted <= done:
        raise Conflict(f"run {run.id!r} already finished its {done} steps; resume with overrides "
                       f'{{"train.steps": M}} where M > {done}')


def delete_run(svc: "Services", run_id: str) -> None:
    def job(session: Session) -> Run:
        run = stored_run(session, run_id)
        if run.status in ACTIVE_STATUSES:
            raise Conflict(f"run {run_id!r} is {run.status}; stop it before deleting")
        if run.status == "queued" and run.slurm_job_id:  # deleting would leave the job to run on the cluster
            raise Conflict(f"run {run_id!r} waits in SLURM's queue as job {run.slurm_job_id}; stop it before deleting")
        store.delete_run(session, run)
        return run

    run = svc.writer.call(job)
    svc.launcher.forget(run_id)
    run_dir = Path(run.run_dir).resolve()
    roots = {svc.settings.runs_dir.resolve(), svc.settings.slurm_run_root().resolve()}
    # Only ever remove a directory the server made for this run.
    if run_dir.parent in roots and run_dir.name == run_id and run_dir.is_dir():
        shutil.rmtree(run_dir, ignore_errors=True)
    svc.broadcaster.publish_run({"id": run_id, "deleted": True})
