"""A hyperparameter sweep's maths, the one copy: `cliplab sweep` and the server's `POST /api/sweeps` (which the
dashboard's sweep form calls) both expand sweeps here, so the same settings and seed give the same runs.

An axis is a dotted config key and its values, written `v1,v2,...` (each read as `--set` reads it: YAML, a text
field keeps the text as written), a YAML list `[[1,5],[1,10]]` for a list-valued field, or (random sweeps only)
a range `loguniform(1e-5,1e-3)`, `uniform(0.1,0.5)` or `randint(1,8)` (inclusive). A grid sweep is every
combination of the axes, in `itertools.product`'s order; a random sweep draws N runs with `random.Random(seed)`.
A sweep over `max_runs` is refused before it is listed. Torch-free and pure: no I/O, no clock unless given.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from contract.config import ConfigError, RunConfig, lower_is_better, parse_cli_override

DEFAULT_MAX_RUNS = 100
MAX_RUNS_CEILING = 1000  # the most runs one sweep may ask the server to check and queue
NOT_SWEPT = ("name", "tags")  # the sweep names and tags each run itself
RANGE_KINDS = ("loguniform", "uniform", "randint")
_RANGE = re.compile(r"(loguniform|uniform|randint)\(\s*([^,()]+?)\s*,\s*([^,()]+?)\s*\)")
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NAME_VALUE_CHARS = 24


class SweepError(ConfigError):
    """A sweep that cannot be listed. `field` names the part of a `POST /api/sweeps` body it is about:
    `axes.<i>.key`, `axes.<i>.values`, `axes`, `random` or `max_runs`."""

    def __init__(self, message: str, field: str = "axes"):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Axis:
    """One swept setting: a dotted config key with its values, or (random sweeps only) a range to draw from."""

    key: str
    values: tuple[Any, ...] = ()
    kind: str | None = None  # one of RANGE_KINDS for a range
    low: float = 0
    high: float = 0
    index: int = 0  # its place among the sweep's axes, for the field an error names

    @property
    def field(self) -> str:
        return f"axes.{self.index}.values"


def parse_axis(spec: str, index: int = 0) -> Axis:
    """`optim.lr=1e-4,3e-4` / `eval.recall_at=[[1,5],[1,10]]` / `optim.lr=loguniform(1e-5,1e-3)` -> Axis."""
    if "=" not in spec:
        raise SweepError(f"{spec!r} must look like key.path=value1,value2", f"axes.{index}")
    key, raw = spec.split("=", 1)
    return axis(key, raw, index)


def axis(key: str, raw: str, index: int = 0) -> Axis:
    """The axis of config key `key` over `raw` (its values, a YAML list or a range); SweepError names the
    problem and the field it is about."""
    key, raw = key.strip(), raw.strip()
    _check_key(key, index)
    field = f"axes.{index}.values"
    if not raw:
        raise SweepError(f"{key}: give its values, comma-separated (e.g. 1e-4,3e-4)", field)
    if m := _RANGE.fullmatch(raw):
        return _range_axis(key, index, *m.groups())
    try:
        values = _list_values(key, raw, field)
        _check_values(key, raw, values, field)
    except RecursionError:  # YAML nested thousands deep, or an alias that contains itself
        raise SweepError(f"{key}: the values are nested too deeply to read", field) from None
    return Axis(key, values=tuple(values), index=index)


def _check_values(key: str, raw: str, values: list[Any], field: str) -> None:
    """Each value once, and finite: NaN or inf is no setting training can use (nor JSON carry)."""
    seen: set[str] = set()
    for value in values:
        if (text := repr(value)) in seen:
            raise SweepError(f"{key}: {value_text(value)} is listed twice in {raw!r}", field)
        seen.add(text)
    bad = next((v for v in values if not _finite(v)), None)
    if bad is not None:
        raise SweepError(f"{key}: {value_text(bad)} is not a finite number; a sweep takes values training can use",
                         field)


def _check_key(key: str, index: int) -> None:
    field = f"axes.{index}.key"
    if not key:
        raise SweepError("a setting has values but no key: name the dotted config key, e.g. optim.lr", field)
    if key in NOT_SWEPT:
        raise SweepError(f"{key}: the sweep sets each run's {key} itself; sweep another setting", field)
    if not _KEY.fullmatch(key):
        raise SweepError(f"{key!r} is not a dotted config key such as optim.lr", field)


def _list_values(key: str, raw: str, field: str) -> list[Any]:
    try:
        if raw.startswith("["):
            _, values = parse_cli_override(f"{key}={raw}")
            if not isinstance(values, list) or not values:
                raise SweepError(f"{key}: {raw!r} is not a non-empty YAML list of values", field)
            return values
        pieces = [piece.strip() for piece in raw.split(",")]
        if "" in pieces:
            raise SweepError(f"{key}: an empty value in {raw!r}; separate values with single commas", field)
        return [parse_cli_override(f"{key}={piece}")[1] for piece in pieces]
    except SweepError:
        raise
    except ConfigError as exc:
        raise SweepError(f"{key}: {exc}", field) from None


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(map(_finite, value))
    if isinstance(value, dict):
        return all(map(_finite, value.values()))
    return True


def _range_axis(key: str, index: int, kind: str, low_text: str, high_text: str) -> Axis:
    field = f"axes.{index}.values"
    whole = kind == "randint"
    try:
        low, high = (int(low_text), int(high_text)) if whole else (float(low_text), float(high_text))
    except ValueError:
        raise SweepError(f"{key}: {kind} takes two {'whole ' if whole else ''}numbers, got ({low_text}, "
                         f"{high_text})", field) from None
    if not low < high or not math.isfinite(float(high) - float(low)):
        raise SweepError(f"{key}: {kind}({low_text}, {high_text}) needs finite bounds, low < high", field)
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"{key}: loguniform needs bounds above 0, got {low_text}", field)
    return Axis(key, kind=kind, low=low, high=high, index=index)


def _draw(axis: Axis, rng: random.Random) -> Any:
    """One value of `axis`: from its range, else one of its values."""
    if axis.kind is None:
        return rng.choice(axis.values)
    if axis.kind == "randint":
        return rng.randint(int(axis.low), int(axis.high))
    if axis.kind == "uniform":
        return _readable(rng.uniform(axis.low, axis.high))
    return _readable(math.exp(rng.uniform(math.log(axis.low), math.log(axis.high))))


def _readable(x: float) -> float:
    """4 significant digits: 0.000312 rather than 0.00031187461 in run names, tables and configs."""
    return float(f"{x:.4g}")


def sweep_points(axes: list[Axis], random_runs: int | None, seed: int,
                 max_runs: int | None = DEFAULT_MAX_RUNS) -> list[dict[str, Any]]:
    """The swept settings of each run ({dotted key: value}): every combination of the axes, or `random_runs`
    random draws (distinct combinations when every axis is a list). SweepError before anything is listed when
    that is more than `max_runs` (None: no limit)."""
    if not axes:
        raise SweepError("nothing to sweep: add a setting and its values (e.g. optim.lr=1e-4,3e-4,1e-3)")
    _check_distinct_keys(axes)
    keys = [a.key for a in axes]
    if random_runs is None:
        ranged = next((a for a in axes if a.kind is not None), None)
        if ranged is not None:
            raise SweepError(f"{ranged.key}: a range is drawn from only in a random sweep; ask for N random runs",
                             ranged.field)
        _check_size(math.prod(len(a.values) for a in axes), max_runs)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(a.values for a in axes))]
    _check_size(random_runs, max_runs)
    rng = random.Random(seed)
    if all(a.kind is None for a in axes):  # only lists: distinct combinations, as many as there are
        total = math.prod(len(a.values) for a in axes)
        if random_runs > total:
            raise SweepError(f"{random_runs} random runs, but the values given make only {total} different "
                             "combinations: run the whole grid, or add values", "random")
        # Combination numbers, drawn without listing the grid (10 keys of 10 values would be 10**10 entries).
        return [_combination(axes, number) for number in rng.sample(range(total), random_runs)]
    return [{a.key: _draw(a, rng) for a in axes} for _ in range(random_runs)]


def _check_distinct_keys(axes: list[Axis]) -> None:
    seen: set[str] = set()
    for a in axes:
        if a.key in seen:
            raise SweepError(f"{a.key} is swept twice; give all its values in one setting", f"axes.{a.index}.key")
        seen.add(a.key)


def _check_size(runs: int, max_runs: int | None) -> None:
    if max_runs is not None and runs > max_runs:
        raise SweepError(f"the sweep makes {runs} runs, over the limit of {max_runs}: remove some values, or draw "
                         "fewer runs at random", "max_runs")


def _combination(axes: list[Axis], number: int) -> dict[str, Any]:
    """The `number`-th combination of the axes' values, in itertools.product's order."""
    point = {}
    for a in reversed(axes):
        number, index = divmod(number, len(a.values))
        point[a.key] = a.values[index]
    return {a.key: point[a.key] for a in axes}


def value_text(value: Any) -> str:
    """A swept value as a user writes it: 0.0003, 1e-05, true, null, /data/x.csv."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _short(value: Any) -> str:
    text = value_text(value)
    return text if len(text) <= _NAME_VALUE_CHARS else text[:_NAME_VALUE_CHARS - 1] + "…"


def run_name(base: str, index: int, width: int, point: dict[str, Any]) -> str:
    """`cpu-demo-03 lr=0.0003 batch_size=128`: the sweep's name, the run's number, and its settings."""
    settings = " ".join(f"{key.rsplit('.', 1)[-1]}={_short(value)}" for key, value in point.items())
    return f"{base}-{index:0{width}d} {settings}".strip()[:200]


def run_names(base: str, points: list[dict[str, Any]]) -> list[str]:
    """Each run's name, numbered from 1 with as many digits as the last number."""
    width = len(str(len(points)))
    return [run_name(base, i + 1, width, point) for i, point in enumerate(points)]


def base_name(config: dict[str, Any], prefix: str | None = None) -> str:
    """What the runs' names start with: `prefix`, else the config's own name (its default when it has none)."""
    for name in (prefix, config.get("name") if isinstance(config, dict) else None):
        if isinstance(name, (str, int, float)) and not isinstance(name, bool) and str(name).strip():
            return str(name).strip()
    return RunConfig.model_fields["name"].default


def default_tag(base: str, now: float | None = None) -> str:
    """`sweep-<name>-<MMDD-HHMMSS>`: the tag a sweep's runs share when none is given."""
    return f"sweep-{base}-{time.strftime('%m%d-%H%M%S', time.localtime(now))}"[:64].strip()


def table_link(tag: str, keys: list[str], metric: str | None) -> str:
    """The dashboard path of the runs table showing only this sweep (`/#/runs?tag=...`): a column per swept key,
    sorted by the best of `metric` when there is one."""
    query: list[tuple[str, str]] = [("tag", tag)] + [("col", f"config:{k}") for k in keys]
    if metric:
        query += [("col", f"best:{metric}"), ("sort", f"{'' if lower_is_better(metric) else '-'}best:{metric}")]
    return f"/#/runs?{urlencode(query, quote_via=quote, safe=':/@')}"
