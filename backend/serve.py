"""Starting the dashboard and REST API on uvicorn: the server's flags, its settings from them, and the run.

`cliplab serve` (trainer/commands/serve.py) adds the demo dataset on first start; `python -m backend.serve`
serves without it (the backend imports nothing of dataset or trainer).
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from backend.app import create_app
from backend.settings import NOTIFY_STATUSES, Settings, resolve_access_token, webhook_url_problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; any other address "
                        "requires the access token)")
    parser.add_argument("--port", type=int, default=None, help="port (default 8000)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="datasets, runs, database (default $CLIPLAB_DATA_DIR or ~/.cliplab)")
    parser.add_argument("--database-url", default=None, help="SQLAlchemy URL, e.g. postgresql://user@host/db "
                        "(default $DATABASE_URL or SQLite in the data dir)")
    parser.add_argument("--max-cpu-runs", type=int, default=None, help="CPU runs at once (default 1)")
    parser.add_argument("--executor", action="append", default=None, choices=["local", "slurm"],
                        help="where runs train: local (subprocesses here, the default) or slurm (batch jobs); "
                        "repeat for both, the first is the new-run default")
    parser.add_argument("--config", type=Path, default=None, dest="config_file",
                        help="TOML or YAML file of server settings, e.g. the [slurm] table "
                        "(default $CLIPLAB_CONFIG_FILE)")
    parser.add_argument("--readable-dir", action="append", type=Path, default=None, dest="readable_dirs",
                        help="a folder besides the data dir that runs may read and previews may serve "
                        "(repeatable; default $CLIPLAB_READABLE_DIRS)")
    parser.add_argument("--public-url", default=None, help="the URL people and trainers reach this server at, "
                        "e.g. http://gpu-box.lab:8000: the base of the run links in notifications and what trainers "
                        "POST to (default: links http://<host>:<port>, this machine's name when bound to 0.0.0.0, "
                        "which another machine may not resolve, so set this there; trainers http://127.0.0.1:<port>; "
                        "$CLIPLAB_PUBLIC_URL)")
    parser.add_argument("--notify-url", action="append", type=_webhook_url, default=None, dest="notify_urls",
                        metavar="URL", help="a webhook (Slack, Mattermost, Discord or any JSON receiver) POSTed a "
                        "message when a run ends (repeatable; default $CLIPLAB_NOTIFY_URLS, a JSON list)")
    parser.add_argument("--notify-on", type=_run_ends, default=None, metavar="ENDS",
                        help=f"which run ends to announce, comma-separated: {', '.join(NOTIFY_STATUSES)} "
                        "(default failed,lost,finished; $CLIPLAB_NOTIFY_ON)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _webhook_url(text: str) -> str:
    problem = webhook_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} is {problem}")
    return text


def _run_ends(text: str) -> list[str]:
    ends = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in ends if v not in NOTIFY_STATUSES]
    if unknown or not ends:
        raise argparse.ArgumentTypeError(f"{(unknown or [text])[0]!r} is not a run end; list any of "
                                         f"{', '.join(NOTIFY_STATUSES)}, comma-separated")
    return ends


# The flag that sets each setting (the others come from CLIPLAB_<NAME> or the --config file only).
FLAGS = {"host": "--host", "port": "--port", "data_dir": "--data-dir", "database_url": "--database-url",
         "max_cpu_runs": "--max-cpu-runs", "executors": "--executor", "config_file": "--config",
         "readable_dirs": "--readable-dir", "public_url": "--public-url", "notify_urls": "--notify-url",
         "notify_on": "--notify-on"}


def _given(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k in FLAGS if (v := getattr(args, "executor" if k == "executors" else k, None)) is not None}


def settings_from_args(args: argparse.Namespace) -> Settings:
    return Settings(**_given(args))


def settings_problems(exc: ValidationError, args: argparse.Namespace) -> list[str]:
    """Each refused setting named as the user set it (its flag, else its CLIPLAB_ variable or the --config
    file), with what is wrong; never the value, which may be a secret (a webhook URL, a database password)."""
    given, lines = _given(args), []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        name = loc[0] if loc else "?"
        if name in given:
            where = FLAGS[name]
        else:
            var = "DATABASE_URL" if name == "database_url" else "CLIPLAB_" + "__".join(loc).upper()
            where = var + (" (or the --config file)" if "config_file" in given else "")
        lines.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return lines


def unwritable_data_dir(data_dir: Path) -> str | None:
    """Why the server could not keep runs and its database in `data_dir` (None when it can): it must be
    able to create the folder and write a file in it."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".cliplab-write-check-"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def run(args: argparse.Namespace, prepare: Callable[[Settings], None] | None = None) -> int:
    """Serve until stopped, with the settings the flags give; exit status 2 when the data dir is unwritable.

    `prepare(settings)`, when given, runs once the data dir is known to be writable, before the app starts
    (`cliplab serve` makes the demo dataset there).
    """
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic >= 1.16 logs each of its built-in autogenerate plugins at INFO on every migration: noise to a user.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for line in settings_problems(exc, args):
            print(f"cliplab serve: error: {line}", file=sys.stderr)
        return 2
    problem = unwritable_data_dir(settings.data_dir)
    if problem is not None:
        print(f"cliplab serve: cannot write to the data directory {settings.data_dir} ({problem}); "
              "choose another with --data-dir or CLIPLAB_DATA_DIR", file=sys.stderr)
        return 2
    if prepare is not None:
        prepare(settings)
    token, _ = resolve_access_token(settings)
    app = create_app(settings)
    shown_host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{shown_host}:{settings.port}/" + (f"?token={token}" if token else "")
    print(f"cliplab serve: data in {settings.data_dir}, database {settings.db_url.split('@')[-1]}", flush=True)
    print(f"cliplab serve: open {url}", flush=True)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=args.log_level,
                            timeout_graceful_shutdown=5, access_log=False)
    server = _Server(config, app)
    _tune_garbage_collector()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled once shutdown is complete
        pass
    return 0


def _tune_garbage_collector() -> None:
    """Fewer, cheaper cycle collections for a server that allocates a dict per event it ingests.

    The ~100k objects of the imported modules and the app live as long as the process, yet every full
    collection walked them again (~80 ms each, a pause of every thread, ~10 per million points ingested);
    frozen, they are skipped. Objects almost all die by reference counting, so collecting after 10,000 net
    allocations instead of 700 reclaims the rare cycles as surely at a tenth of the cost.
    """
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


class _Server(uvicorn.Server):
    """uvicorn's server, but open event streams end as soon as shutdown begins (they would hold it up)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI):
        super().__init__(config)
        self.cliplab_app = app

    def handle_exit(self, sig: int, frame: Any) -> None:
        svc = getattr(self.cliplab_app.state, "services", None)
        if svc is not None:
            svc.broadcaster.close()
        super().handle_exit(sig, frame)


def main(argv: list[str] | None = None) -> int:
    """`python -m backend.serve [flags]`: the server alone, without the demo dataset."""
    parser = argparse.ArgumentParser(prog="python -m backend.serve", description="start the dashboard and REST API")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
