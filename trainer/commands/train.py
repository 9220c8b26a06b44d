"""`cliplab train [CONFIG] [--set k=v ...] [--run-dir DIR] [--resume PATH|latest]`: the training program.

The same entry point runs alone (`python -m trainer train`) and under `torchrun --nproc_per_node N -m trainer
train`. `run()` resolves the config and run directory (trainer.training.launch), builds a Trainer and calls
`trainer.train()`; this module only turns what happens into exit statuses and last words.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from contract.config import ConfigError, RunConfig
from contract.events import ENV_RUN_ID, ENV_SERVER
from contract.table import DataError
from dataset.images import own_pixel_check
from trainer.attach import AttachError
from trainer.checkpoint import CheckpointError
from trainer.distributed import DistInfo, cleanup, init_distributed
from trainer.events import EventWriter
from trainer.training.launch import (
    events_and_stop,
    print_summary,
    remove_if_empty,
    report_to_launcher,
    resolve_run,
)
from trainer.training.stop import StopRequest
from trainer.training.trainer import Trainer

BAD_INPUT, FAILED, INTERRUPTED = 2, 1, 130


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML config (default: the run dir's config.yaml when "
                        "resuming, else the built-in defaults = the CPU demo)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--run-dir", help="run directory (default: <output_dir>/<name>-<timestamp>)")
    parser.add_argument("--resume", metavar="PATH|latest",
                        help="continue step-exactly from a checkpoint: a step directory, a run directory, "
                        "or 'latest' of --run-dir")
    parser.add_argument("--server", metavar="URL", default=os.environ.get(ENV_SERVER),
                        help="attach the run to the dashboard at URL (default $CLIPLAB_SERVER): it shows up "
                        "live there and can be stopped from there; the server's access token comes from "
                        "$CLIPLAB_TOKEN. An unreachable server only warns: `cliplab sync` uploads later")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 finished or stopped (SIGTERM/SIGINT, checkpoint saved), 1 failed, 2 bad config/arguments."""
    own_pixel_check()  # images are checked by name in dataset.images, not by Pillow's anonymous warning
    dist = init_distributed()
    started = time.monotonic()
    events: EventWriter | None = None
    stop: StopRequest | None = None
    run_dir: Path | None = None
    try:
        try:
            cfg, run_dir, resume_from = resolve_run(args, dist)
        except (ConfigError, FileNotFoundError) as exc:
            print(f"cliplab train: {exc}", file=sys.stderr)
            report_to_launcher(args.run_dir, str(exc), dist)
            return BAD_INPUT
        # By hand, nothing is written until the run has been built: bad input leaves no trace in the run dir
        # (a typo must not mark a stopped run failed). A launched run reports at once, for its page.
        launched = bool(os.environ.get(ENV_RUN_ID))
        try:
            events, stop = events_and_stop(None if launched else args.server, cfg, run_dir, dist, launched)
        except AttachError as exc:
            print(f"cliplab train: {exc}", file=sys.stderr)
            return BAD_INPUT
        return _train(cfg, run_dir, resume_from, dist, events, stop, launched, started)
    finally:
        if stop is not None:
            stop.uninstall()
        if events is not None:
            events.close()
        if run_dir is not None and args.run_dir is None and not args.resume and dist.is_main:
            remove_if_empty(run_dir)  # the folder resolve_run claimed for it, if bad input left it empty
        cleanup()


def _train(cfg: RunConfig, run_dir: Path, resume_from: Path | None, dist: DistInfo, events: EventWriter,
           stop: StopRequest, launched: bool, started: float) -> int:
    """Build the Trainer and run it; the exit status, and the run's last word whatever happens."""
    trainer = None
    try:
        try:
            trainer = Trainer(cfg, run_dir, dist, events, stop, resume_from)
        except (ConfigError, DataError, CheckpointError) as exc:  # bad input found while building
            if launched:
                events.status("failed", reason=str(exc))
            else:
                events.discard()
            print(f"cliplab train: {exc}", file=sys.stderr)
            return BAD_INPUT
        status = trainer.train()
        if dist.is_main:
            print_summary(run_dir, time.monotonic() - started)
        return 0 if status in ("finished", "stopped") else FAILED
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint now, but the run still gets a last word
        return _interrupted(events, trainer.step if trainer is not None else 0)
    except Exception as exc:  # the run's last word: a failed status with the reason, and the traceback
        return _failed(events, exc)
    finally:
        if trainer is not None:
            trainer.close()


def _interrupted(events: EventWriter, step: int) -> int:
    events.status("stopped", reason=f"interrupted at step {step} before a checkpoint was saved; "
                  "resume continues from the latest checkpoint", step=step)
    print(f"cliplab train: interrupted at step {step}", file=sys.stderr)
    return INTERRUPTED


def _failed(events: EventWriter, exc: Exception) -> int:
    reason = f"{type(exc).__name__}: {exc}"
    events.log(traceback.format_exc(), level="error")
    events.status("failed", reason=reason)
    print(f"cliplab train: failed: {reason}", file=sys.stderr)
    traceback.print_exc()
    return FAILED
