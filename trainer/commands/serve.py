"""`cliplab serve`: the dashboard and REST API (backend/serve.py), with the demo dataset made on first start
so that the new-run form's default (the CPU demo config) trains at once."""

from __future__ import annotations

import argparse
import sys

from backend import serve as backend_serve
from backend.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    backend_serve.add_arguments(parser)
    parser.add_argument("--no-demo", action="store_true", help="do not prepare the demo dataset on start")


def prepare_demo(settings: Settings) -> None:
    """<data dir>/datasets/demo, generated unless it is there (a missing PIL only costs the demo)."""
    try:
        from dataset.demo import ensure_demo_dataset
    except ImportError as exc:
        print(f"cliplab serve: demo dataset unavailable ({exc}); continuing without it", file=sys.stderr)
        return
    if not (settings.datasets_dir / "demo" / "dataset.json").is_file():
        print("cliplab serve: preparing the demo dataset (first start only) ...", flush=True)
    ensure_demo_dataset(settings.data_dir)


def run(args: argparse.Namespace) -> int:
    return backend_serve.run(args, prepare=None if args.no_demo else prepare_demo)
