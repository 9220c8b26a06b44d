"""`cliplab sweep CONFIG --server URL --grid optim.lr=1e-4,3e-4 [--grid ...] [--random N]`: launch a
hyperparameter sweep on a dashboard.

Each point of the sweep is one run created with `POST /api/runs`: the server queues it until the GPUs (or CPU
slots, or SLURM) it asks for are free, so a sweep larger than the machine simply waits its turn. Every config
is validated first, locally and by the server (`POST /api/configs/validate`, which also checks data paths
and the machine's limits), so a bad value launches nothing rather than half a sweep. The runs share a tag;
the command prints the runs-table link that shows them with a column per swept setting. Torch-free.

`--grid KEY=V1,V2,...` (or a YAML list, `KEY=[[1,5],[1,10]]` for a list-valued field) sweeps every
combination. With `--random N`, N runs each draw every key at random: from its values, or from a range
written `loguniform(1e-5,1e-3)`, `uniform(0.1,0.5)` or `randint(1,8)` (inclusive).
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlencode

from contract.config import ConfigError, RunConfig, load_config, lower_is_better, parse_cli_override
from contract.events import ENV_SERVER
from trainer.attach import ENV_ACCESS_TOKEN, AttachError, ServerClient, ServerUnreachable
from trainer.commands.flags import non_negative_int, positive_int

DEFAULT_MAX_RUNS = 100
_RANGE = re.compile(r"(loguniform|uniform|randint)\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)")


@dataclass(frozen=True)
class Axis:
    """One swept setting: a dotted config key with its values, or (random sweeps only) a range to draw from."""

    key: str
    values: tuple[Any, ...] = ()
    draw: Callable[[random.Random], Any] | None = None
    spec: str = ""


def _range(key: str, kind: str, low_text: str, high_text: str) -> Callable[[random.Random], Any]:
    try:
        low, high = (int(low_text), int(high_text)) if kind == "randint" else (float(low_text), float(high_text))
    except ValueError:
        raise ConfigError(f"--grid {key}: {kind} takes two {'whole ' if kind == 'randint' else ''}numbers, got "
                          f"({low_text}, {high_text})") from None
    if not low < high or not all(math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"--grid {key}: {kind}({low_text}, {high_text}) needs finite bounds, low < high")
    if kind == "randint":
        return lambda rng: rng.randint(low, high)
    if kind == "uniform":
        return lambda rng: _readable(rng.uniform(low, high))
    if low <= 0:
        raise ConfigError(f"--grid {key}: loguniform needs bounds above 0, got {low_text}")
    return lambda rng: _readable(math.exp(rng.uniform(math.log(low), math.log(high))))


def _readable(x: float) -> float:
    """4 significant digits: 0.000312 rather than 0.00031187461 in run names, tables and configs."""
    return float(f"{x:.4g}")


def parse_axis(spec: str) -> Axis:
    """`optim.lr=1e-4,3e-4` / `eval.recall_at=[[1,5],[1,10]]` / `optim.lr=loguniform(1e-5,1e-3)` -> Axis.
    A value is read as `--set` reads it (YAML; a text field keeps the text as written)."""
    if "=" not in spec:
        raise ConfigError(f"--grid {spec!r} must look like key.path=value1,value2")
    key, raw = (part.strip() for part in spec.split("=", 1))
    if not key:
        raise ConfigError(f"--grid {spec!r} has an empty key")
    if m := _RANGE.fullmatch(raw):
        return Axis(key, draw=_range(key, *m.groups()), spec=raw)
    if raw.startswith("["):
        _, values = parse_cli_override(f"{key}={raw}")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"--grid {key}: {raw!r} is not a non-empty YAML list of values")
    else:
        values = [parse_cli_override(f"{key}={piece}")[1] for piece in raw.split(",")]
    if len({repr(v) for v in values}) < len(values):
        raise ConfigError(f"--grid {key}: a value is listed twice in {raw!r}")
    return Axis(key, values=tuple(values), spec=raw)


def sweep_points(axes: list[Axis], random_runs: int | None, seed: int,
                 max_runs: int | None = None) -> list[dict[str, Any]]:
    """The settings of each run: every combination of the axes, or `random_runs` random draws; ConfigError
    before anything is built when that is more than `max_runs`."""
    keys = [a.key for a in axes]
    if len(set(keys)) < len(keys):
        twice = dict.fromkeys(k for k in keys if keys.count(k) > 1)
        raise ConfigError(f"--grid names {', '.join(twice)} more than once; give each key's values in one --grid")
    if random_runs is None:
        ranged = [a.key for a in axes if a.draw is not None]
        if ranged:
            raise ConfigError(f"--grid {ranged[0]}: a range is drawn from only in a random sweep (--random N)")
        _check_size(math.prod(len(a.values) for a in axes), max_runs)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(a.values for a in axes))]
    _check_size(random_runs, max_runs)
    rng = random.Random(seed)
    if all(a.draw is None for a in axes):  # only lists: distinct combinations, as many as there are
        total = math.prod(len(a.values) for a in axes)
        if random_runs > total:
            raise ConfigError(f"--random {random_runs}: the values given make only {total} different "
                              "combinations; run the whole grid (leave out --random) or add values")
        # Combination numbers, drawn without listing the grid (10 keys of 10 values would be 10**10 entries).
        return [_combination(axes, number) for number in rng.sample(range(total), random_runs)]
    return [{a.key: a.draw(rng) if a.draw else rng.choice(a.values) for a in axes} for _ in range(random_runs)]


def _check_size(runs: int, max_runs: int | None) -> None:
    if max_runs is not None and runs > max_runs:
        raise ConfigError(f"the sweep makes {runs} runs, over --max-runs {max_runs}; raise --max-runs, or sample "
                          "it with --random N")


def _combination(axes: list[Axis], number: int) -> dict[str, Any]:
    """The `number`-th combination of the axes' values, in itertools.product's order."""
    point = {}
    for axis in reversed(axes):
        number, index = divmod(number, len(axis.values))
        point[axis.key] = axis.values[index]
    return {a.key: point[a.key] for a in axes}


def _short(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if len(text) <= 24 else text[:23] + "…"


def run_name(base: str, index: int, width: int, point: dict[str, Any]) -> str:
    """`cpu-demo-03 lr=0.0003 batch_size=128`: the sweep's name, the run's number, and its settings."""
    settings = " ".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in point.items())
    return f"{base}-{index:0{width}d} {settings}".strip()[:200]


def table_link(server: str, tag: str, point_keys: list[str], metric: str | None) -> str:
    """The runs table showing only this sweep, a column per swept key, sorted by the best of `metric`."""
    query: list[tuple[str, str]] = [("tag", tag)] + [("col", f"config:{k}") for k in point_keys]
    if metric:
        query += [("col", f"best:{metric}"), ("sort", f"{'' if lower_is_better(metric) else '-'}best:{metric}")]
    return f"{server}/#/runs?{urlencode(query, quote_via=quote, safe=':/@')}"


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
    parser.add_argument("--max-runs", type=positive_int, default=DEFAULT_MAX_RUNS,
                        help=f"refuse a sweep of more runs than this (default {DEFAULT_MAX_RUNS})")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and check their configs; launch "
                                                                 "nothing (no --server needed)")
    parser.add_argument("--server", metavar="URL", default=os.environ.get(ENV_SERVER),
                        help="the dashboard (default $CLIPLAB_SERVER); its access token comes from $CLIPLAB_TOKEN")


def _configs(args: argparse.Namespace) -> tuple[str, list[dict[str, Any]], list[RunConfig]]:
    """The sweep's name, each run's swept settings and its whole config, validated here; ConfigError names
    the first bad one."""
    if not args.axes:
        raise ConfigError("nothing to sweep: add --grid KEY=v1,v2 (e.g. --grid optim.lr=1e-4,3e-4,1e-3)")
    points = sweep_points([parse_axis(spec) for spec in args.axes], args.random, args.random_seed, args.max_runs)
    shared = {".".join(path): value for path, value in map(parse_cli_override, args.overrides)}
    base = args.name or load_config(args.config, shared).name  # the config's own name, even where --grid sweeps it
    configs = []
    for point in points:
        try:
            configs.append(load_config(args.config, {**shared, **point}))
        except ConfigError as exc:
            settings = ", ".join(f"{k}={_short(v)}" for k, v in point.items())
            raise ConfigError(f"the run with {settings}: {exc}") from None
    return base, points, configs


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 every run was created (or, --dry-run, checked), 1 the server stopped answering, 2 bad
    arguments, a config this machine or the server refuses, or a wrong address (nothing launched)."""
    try:
        base, points, configs = _configs(args)
    except ConfigError as exc:
        print(f"cliplab sweep: {exc}", file=sys.stderr)
        return 2
    width = len(str(len(points)))
    names = [run_name(base, i + 1, width, p) for i, p in enumerate(points)]
    tag = args.tag or f"sweep-{base}-{time.strftime('%m%d-%H%M%S')}"[:64]
    print("\n".join(f"  {name}" for name in names))
    print(f"{len(points)} run{'s' * (len(points) != 1)} over {', '.join(points[0])}, tagged {tag}")
    if not args.server:
        if args.dry_run:
            print("dry run: the configs are valid here; nothing launched (add --server to have the server check them)")
            return 0
        print(f"cliplab sweep: --server URL (or ${ENV_SERVER}) is needed to launch the runs; --dry-run checks "
              "them without one", file=sys.stderr)
        return 2
    placement = {"gpus": args.gpus, "nproc": args.nproc, "executor": args.executor}
    bodies = [{"name": name, "config": cfg.to_dict(), "tags": list(dict.fromkeys([*cfg.tags, tag])), **placement}
              for name, cfg in zip(names, configs)]
    try:
        client = ServerClient(args.server, os.environ.get(ENV_ACCESS_TOKEN))
        _check_all(client, bodies)
        if args.dry_run:
            print(f"dry run: the server accepts all {len(bodies)} runs; nothing launched")
            return 0
        created = _create_all(client, bodies)
    except AttachError as exc:
        print(f"cliplab sweep: {exc}", file=sys.stderr)
        return 2
    except (ServerUnreachable, PartlyLaunched) as exc:
        print(f"cliplab sweep: {exc}", file=sys.stderr)
        return 1
    for run_id, name in created:
        print(f"{run_id}  {name}")
    link = table_link(client.server, tag, list(points[0]), _metric(configs[0]))
    print(f"{len(created)} runs created (the server starts each when its resources are free): {link}")
    return 0


def _metric(cfg: RunConfig) -> str | None:
    return cfg.checkpoint.best_metric if cfg.data.val else None


def _check_all(client: ServerClient, bodies: list[dict[str, Any]]) -> None:
    """The server's verdict on every config before any run is created (data paths, limits of its machine)."""
    for body in bodies:
        check = {"config": body["config"], "gpus": body["gpus"], "nproc": body["nproc"],
                 "executor": body["executor"]}
        answer = client.request("POST", "/api/configs/validate", check)
        if not answer.get("valid"):
            errors = "; ".join(f"{e.get('field', '?')}: {e.get('message', e)}" for e in answer.get("errors") or [])
            raise AttachError(f"the server refuses the run {body['name']!r}: {errors or answer}; nothing was launched")


class PartlyLaunched(Exception):
    """The server stopped answering after some of the runs were created."""


def _create_all(client: ServerClient, bodies: list[dict[str, Any]]) -> list[tuple[str, str]]:
    created: list[tuple[str, str]] = []
    for body in bodies:
        try:
            answer = client.request("POST", "/api/runs", body)
        except (AttachError, ServerUnreachable) as exc:
            if not created:
                raise
            done = ", ".join(run_id for run_id, _ in created)
            raise PartlyLaunched(f"{exc}; {len(created)} of {len(bodies)} runs were created ({done}); "
                                  "stop or delete them in the dashboard, or launch the rest") from None
        created.append((answer["id"], answer["name"]))
    return created
