"""What a training run needs before its Trainer is built: the config, run directory and resume point from the
command line, the event writer and stop flag, the dashboard attachment; and its last words after it ends.

Every function is called on every rank; rank 0 decides what the ranks must agree on and broadcasts it.
"""

from __future__ import annotations

import argparse
import os
from datetime import datetime
from pathlib import Path

from contract.config import ConfigError, RunConfig, load_config, resume_change_errors
from contract.events import ENV_RUN_ID
from contract.run_dir import CHECKPOINTS_DIR, CONFIG_FILE, EVENTS_FILE, METRICS_FILE
from trainer.attach import ENV_ACCESS_TOKEN, AttachError, Attachment, ServerClient
from trainer.distributed import DistInfo, broadcast_object
from trainer.events import EventWriter
from trainer.training.checkpoint_folder import resolve_resume, run_dir_of, saved_config
from trainer.training.progress import silence_stdout
from trainer.training.stop import StopRequest


def resolve_run(args: argparse.Namespace, dist: DistInfo) -> tuple[RunConfig, Path, Path | None]:
    """`cliplab train`'s arguments -> (config, run directory (the same on every rank), the checkpoint to
    resume from or None). Raises ConfigError or FileNotFoundError naming what is wrong."""
    resume_from = None
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.resume:
        resume_from = resolve_resume(args.resume, run_dir)
        run_dir = run_dir or run_dir_of(resume_from)
    elif run_dir is not None:
        # Rank 0 looks before any rank writes, so the ranks cannot disagree about what was there.
        earlier = broadcast_object(previous_run_files(run_dir) if dist.is_main else None)
        if earlier:
            raise ConfigError(f"run directory {run_dir} already holds a run ({', '.join(earlier)}); continue it "
                              "with --resume latest, or choose a new --run-dir")
    config_path = args.config
    if config_path is None and run_dir is not None and (run_dir / CONFIG_FILE).is_file():
        config_path = run_dir / CONFIG_FILE  # resuming a run: its own resolved config
    elif config_path is None and resume_from is not None and (run_dir_of(resume_from) / CONFIG_FILE).is_file():
        # a new --run-dir continuing another run's checkpoint: the config that checkpoint was trained with
        # (the defaults would silently train another setup, or not fit the checkpoint's optimizer state)
        config_path = run_dir_of(resume_from) / CONFIG_FILE
    cfg = load_config(config_path, args.overrides)
    if resume_from is not None:
        _check_resumable(cfg, run_dir_of(resume_from))  # the run that wrote the checkpoint
    if run_dir is None:  # rank 0 claims a new folder; every rank learns which, or why there is none
        claimed, problem = broadcast_object(_claim(Path(cfg.output_dir), cfg.name) if dist.is_main else None)
        if problem:
            raise ConfigError(problem)
        run_dir = Path(claimed)
    return cfg, run_dir, resume_from


def _claim(output_dir: Path, name: str) -> tuple[str | None, str | None]:
    try:
        return str(claim_run_dir(output_dir, name)), None
    except OSError as exc:
        return None, f"output_dir: cannot make a run folder in {output_dir} ({exc.strerror or exc})"


def claim_run_dir(output_dir: Path, name: str) -> Path:
    """A new, empty folder `<name>-<timestamp>` in `output_dir`, made here so that no other run takes it too:
    runs of one name started in the same second (a shell loop of a sweep) get `-2`, `-3`, ... A name is free
    text ("lr=1e-3/bs=64"): a separator in it must not nest or escape output_dir."""
    stem = f"{name.replace('/', '_').replace(os.sep, '_')}-{datetime.now():%Y%m%d-%H%M%S}"
    output_dir.mkdir(parents=True, exist_ok=True)
    candidate, n = output_dir / stem, 1
    while True:
        try:
            candidate.mkdir()  # atomic: of two processes making one folder, one gets FileExistsError
            return candidate
        except FileExistsError:
            n += 1
            candidate = output_dir / f"{stem}-{n}"


def remove_if_empty(run_dir: Path) -> None:
    """Drop a claimed run folder that bad input left empty (nothing was written: no trace of the attempt)."""
    try:
        run_dir.rmdir()  # refuses a folder with anything in it
    except OSError:
        pass


def _check_resumable(cfg: RunConfig, run_dir: Path) -> None:
    """ConfigError naming each setting the resume changes that the run's checkpoint cannot follow."""
    saved = saved_config(run_dir)
    errors = [] if saved is None else resume_change_errors(saved, cfg)
    if errors:
        raise ConfigError("; ".join(f"{e['field']}: {e['message']}" for e in errors))


def previous_run_files(run_dir: Path) -> list[str]:
    """What in `run_dir` a new run would overwrite: its events, metrics or checkpoints. The launcher's own
    files (config.yaml, stdout.log) written before it starts a fresh run are not a previous run."""
    found = [name for name in (EVENTS_FILE, METRICS_FILE)
             if (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0]
    if (run_dir / CHECKPOINTS_DIR).is_dir() and any((run_dir / CHECKPOINTS_DIR).iterdir()):
        found.append(f"{CHECKPOINTS_DIR}/")
    return found


def events_and_stop(server: str | None, cfg: RunConfig, run_dir: Path, dist: DistInfo,
                    launched: bool) -> tuple[EventWriter, StopRequest]:
    """The run's event writer and stop flag. With a dashboard to attach to (`server`), rank 0 registers the run
    once it is built, and the dashboard's stop request sets the same flag SIGTERM does."""
    attachment = _attachment(server, cfg, run_dir, dist)
    stop = StopRequest.install()
    if attachment is not None:
        attachment.on_stop = stop.request
    events = EventWriter(run_dir, enabled=dist.is_main, hold=not launched,
                         connect=attachment.connect if attachment is not None else None)
    return events, stop


def _attachment(server: str | None, cfg: RunConfig, run_dir: Path, dist: DistInfo) -> Attachment | None:
    """Rank 0's link to the dashboard at `server` (None without one, and on other ranks). A wrong address
    or token raises AttachError on every rank before anything is built; an unreachable server only warns."""
    if not server:
        return None
    problem, attachment = None, None
    if dist.is_main:
        try:
            client = ServerClient(server, os.environ.get(ENV_ACCESS_TOKEN))
            on_gpus = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and dist.device.type == "cuda")
            attachment = Attachment(client, run_dir, cfg.to_dict(), dist.world_size, dist.world_size if on_gpus else 0)
            attachment.check()
        except AttachError as exc:
            problem = str(exc)
    problem = broadcast_object(problem)
    if problem:
        raise AttachError(problem)
    return attachment


def print_summary(run_dir: Path, wall_s: float) -> None:
    """The closing lines: how the run ended, its directory, wall time, final and best metrics, best checkpoint."""
    from trainer.run_summary import format_summary, summarize_run_dir

    try:
        text = format_summary(summarize_run_dir(run_dir), wall_s)
    except Exception as exc:  # the run is over and recorded: a summary that cannot be read must not fail it
        text = f"(no summary: {type(exc).__name__}: {exc})"
    try:
        print(text, flush=True)
    except OSError:  # stdout is gone (its reader quit): nor must a summary nobody can read
        silence_stdout()


def report_to_launcher(run_dir: str | None, reason: str, dist: DistInfo) -> None:
    """A run the backend launched records why it could not start, so its page says so. A run started by
    hand gets only the message: a typo must not mark an existing run failed or create a directory."""
    if run_dir and dist.is_main and os.environ.get(ENV_RUN_ID) and Path(run_dir).is_dir():
        with EventWriter(run_dir) as ev:
            ev.status("failed", reason=reason)
