"""`cliplab sweep CONFIG --server URL --grid optim.lr=1e-4,3e-4 [--grid ...] [--random N]`: launch a
hyperparameter sweep on a dashboard.

A thin client of the server's `POST /api/sweeps`, which the dashboard's sweep form calls too: the server
expands the sweep (contract/sweep.py, so a seed draws the same runs here and in the dashboard), checks every
run's config as `POST /api/runs` would (data paths, the machine's limits) and queues them all, or none when one
is refused. The runs share a tag; the command prints the runs-table link that shows them with a column per
swept setting. The spec and each config are also checked here first, so a bad value fails without a server
(and `--dry-run` without `--server` is a check on this machine alone). Torch-free.

`--grid KEY=V1,V2,...` (or a YAML list, `KEY=[[1,5],[1,10]]` for a list-valued field) sweeps every
combination. With `--random N`, N runs each draw every key at random: from its values, or from a range
written `loguniform(1e-5,1e-3)`, `uniform(0.1,0.5)` or `randint(1,8)` (inclusive).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from contract.config import ConfigError, load_config, parse_cli_override
from contract.events import ENV_SERVER
from contract.sweep import DEFAULT_MAX_RUNS, MAX_RUNS_CEILING, default_tag, parse_axis, run_names, sweep_points
from trainer.attach import ENV_ACCESS_TOKEN, AttachError, ServerClient, ServerUnreachable
from trainer.commands.flags import non_negative_int, positive_int

SERVER_TIMEOUT_S = 120.0  # the server checks (and queues) up to max_runs configs in one answer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the YAML config every run starts from (or a bundled one by name)")
    parser.add_argument("--grid", dest="axes", action="append", default=[], metavar="KEY=VALUES",
                        help="a setting to sweep: KEY=v1,v2,... or a YAML list; with --random also "
                             "loguniform(a,b), uniform(a,b) or randint(a,b) (repeatable)")
    parser.add_argument("--random", type=positive_int, metavar="N",
                        help="N runs drawn at random instead of every combination")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the --random draws (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting every run shares, as in cliplab train (repeatable)")
    parser.add_argument("--name", help="the sweep's name: run names start with it (default: the config's name)")
    parser.add_argument("--tag", help="the tag all runs get (default: sweep-<name>-<time>)")
    parser.add_argument("--gpus", type=non_negative_int, default=0, help="GPUs per run (default 0: CPU)")
    parser.add_argument("--nproc", type=positive_int, help="processes per run (default max(gpus, 1))")
    parser.add_argument("--executor", help="local or slurm (default: the server's first)")
    parser.add_argument("--max-runs", type=_max_runs, default=DEFAULT_MAX_RUNS,
                        help=f"refuse a sweep of more runs than this (default {DEFAULT_MAX_RUNS}, at most "
                             f"{MAX_RUNS_CEILING})")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and check their configs; launch "
                                                                 "nothing (no --server needed)")
    parser.add_argument("--server", metavar="URL", default=os.environ.get(ENV_SERVER),
                        help="the dashboard (default $CLIPLAB_SERVER); its access token comes from $CLIPLAB_TOKEN")


def _max_runs(text: str) -> int:
    value = positive_int(text)
    if value > MAX_RUNS_CEILING:
        raise argparse.ArgumentTypeError(f"at most {MAX_RUNS_CEILING} runs per sweep, got {value}")
    return value


def _local_plan(args: argparse.Namespace) -> tuple[dict[str, Any], list[str], list[str]]:
    """(the base config, each run's name, the swept keys), checked on this machine; ConfigError names the first
    problem."""
    if not args.axes:
        raise ConfigError("nothing to sweep: add --grid KEY=v1,v2 (e.g. --grid optim.lr=1e-4,3e-4,1e-3)")
    axes = [parse_axis(spec, i) for i, spec in enumerate(args.axes)]
    points = sweep_points(axes, args.random, args.random_seed, args.max_runs)
    shared = {".".join(path): value for path, value in map(parse_cli_override, args.overrides)}
    base = load_config(args.config, shared)
    for point in points:
        try:
            load_config(args.config, {**shared, **point})
        except ConfigError as exc:
            settings = ", ".join(f"{k}={v}" for k, v in point.items())
            raise ConfigError(f"the run with {settings}: {exc}") from None
    return base.to_dict(), run_names(args.name or base.name, points), list(points[0])


def _request(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """The POST /api/sweeps body for these flags."""
    axes = [dict(zip(("key", "values"), spec.split("=", 1))) for spec in args.axes]
    return {"config": config, "axes": axes, "random": args.random, "seed": args.random_seed,
            "max_runs": args.max_runs, "name": args.name, "tags": [args.tag] if args.tag else None,
            "gpus": args.gpus, "nproc": args.nproc, "executor": args.executor}


def _print_plan(names: list[str], keys: list[str], tag: str) -> None:
    print("\n".join(f"  {name}" for name in names))
    print(f"{len(names)} run{'s' * (len(names) != 1)} over {', '.join(keys)}, tagged {tag}")


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 every run was created (or, --dry-run, checked), 1 the server stopped answering, 2 bad
    arguments, a config this machine or the server refuses, or a wrong address (nothing launched)."""
    try:
        config, names, keys = _local_plan(args)
    except ConfigError as exc:
        hint = "; or raise --max-runs" if getattr(exc, "field", None) == "max_runs" else ""
        print(f"cliplab sweep: {exc}{hint}", file=sys.stderr)
        return 2
    if not args.server:
        _print_plan(names, keys, args.tag or default_tag(args.name or config["name"]))
        if args.dry_run:
            print("dry run: the configs are valid here; nothing launched (add --server to have the server check them)")
            return 0
        print(f"cliplab sweep: --server URL (or ${ENV_SERVER}) is needed to launch the runs; --dry-run checks "
              "them without one", file=sys.stderr)
        return 2
    try:
        client = ServerClient(args.server, os.environ.get(ENV_ACCESS_TOKEN), timeout_s=SERVER_TIMEOUT_S)
        return _on_server(client, _request(args, config), args.dry_run)
    except AttachError as exc:
        print(f"cliplab sweep: {exc}; nothing was launched", file=sys.stderr)
        return 2
    except ServerUnreachable as exc:
        print(f"cliplab sweep: {exc}", file=sys.stderr)
        return 1


def _on_server(client: ServerClient, body: dict[str, Any], dry_run: bool) -> int:
    """The server's plan and verdict first (printed), then, unless a dry run, the sweep queued under that tag."""
    plan = client.request("POST", "/api/sweeps", {**body, "dry_run": True})
    if plan["runs"]:
        _print_plan([r["name"] for r in plan["runs"]], plan["keys"], plan["tag"])
    if not plan["valid"]:
        refused = "; ".join(p["message"] for p in plan["problems"])
        print(f"cliplab sweep: the server refuses {refused}; nothing was launched", file=sys.stderr)
        return 2
    if dry_run:
        print(f"dry run: the server accepts all {len(plan['runs'])} runs; nothing launched")
        return 0
    try:
        done = client.request("POST", "/api/sweeps", {**body, "tags": [plan["tag"]], "dry_run": False})
    except ServerUnreachable as exc:
        raise ServerUnreachable(f"{exc}; the sweep may have been queued all the same: look for the tag "
                                f"{plan['tag']} in the dashboard before launching it again") from None
    for created in done["created"]:
        print(f"{created['id']}  {created['name']}")
    print(f"{len(done['created'])} runs created (the server starts each when its resources are free): "
          f"{client.server}{done['link']}")
    return 0
