"""What a run directory says about its run: status, progress, final and best metrics, the best checkpoint.

Read from events.jsonl, the durable record across resumes, so `cliplab train`'s closing summary and
`cliplab runs` tell the same story the dashboard does. Torch-free.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contract.config import lower_is_better
from contract.events import EVENTS_FILE, read_events
from contract.run_dir import BEST, CONFIG_FILE, read_pointer

SERIES_KINDS = ("metric", "eval")  # the values a summary reports (system metrics are for charts)


@dataclass
class RunSummary:
    run_dir: Path
    name: str | None = None
    status: str | None = None  # the last status event's: starting, running, stopped, finished, failed
    reason: str | None = None
    step: int = 0
    total_steps: int | None = None
    latest: dict[str, float] = field(default_factory=dict)  # the last value of each train and eval metric
    best: dict[str, tuple[float, int]] = field(default_factory=dict)  # eval metric -> (best value, its step)
    first_time: float | None = None
    last_time: float | None = None
    ended_s: float = 0.0  # time between `starting` and the final status of attempts that ended
    attempt_start: float | None = None  # the `starting` time of an attempt with no final status yet
    best_metric: str | None = None  # checkpoint.best_metric: what selects checkpoints/best
    best_checkpoint: Path | None = None
    unreadable: str | None = None  # why events.jsonl could not be read to its end


def _number(value: Any) -> int | float | None:
    """`value` when it is a number (JSON's true/false are not), else None: a hand-edited or foreign
    events.jsonl must not break the summary of the rest."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _fold(summary: RunSummary, ev: dict[str, Any]) -> None:
    kind, step, time = ev.get("kind"), _number(ev.get("step")), _number(ev.get("time"))
    step = step if isinstance(step, int) else None
    if time is not None:
        summary.first_time = summary.first_time if summary.first_time is not None else time
        summary.last_time = time
    if step is not None:
        summary.step = step
    if isinstance(_number(ev.get("total_steps")), int):
        summary.total_steps = ev["total_steps"]
    if kind == "status" and isinstance(ev.get("status"), str):
        summary.status, summary.reason = ev["status"], ev.get("reason")
        if summary.status == "starting":
            summary.attempt_start = time
        elif summary.status in ("stopped", "finished", "failed") and None not in (summary.attempt_start, time):
            summary.ended_s += time - summary.attempt_start
            summary.attempt_start = None
    if kind not in SERIES_KINDS or not isinstance(ev.get("values"), dict):
        return
    for name, value in ev["values"].items():
        if _number(value) is None:
            continue
        summary.latest[name] = value
        if kind == "eval":
            old = summary.best.get(name)
            if old is None or (value < old[0] if lower_is_better(name) else value > old[0]):
                summary.best[name] = (value, step if step is not None else 0)


def running_s(summary: RunSummary) -> float | None:
    """Seconds the run's attempts ran (a resume's waiting time left out); an unfinished one up to its last event."""
    if summary.first_time is None:
        return None
    open_s = summary.last_time - summary.attempt_start if summary.attempt_start is not None else 0.0
    return summary.ended_s + open_s


# libyaml's parser where PyYAML has it: `cliplab runs` reads a config per run, ten times faster with it.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.load((run_dir / CONFIG_FILE).read_text(), Loader=_YAML_LOADER)
    except (OSError, ValueError, yaml.YAMLError):  # ValueError: not UTF-8
        return {}
    return data if isinstance(data, dict) else {}


def _best_metric(config: dict[str, Any]) -> str:
    checkpoint = config.get("checkpoint")
    metric = checkpoint.get("best_metric") if isinstance(checkpoint, dict) else None
    return metric if isinstance(metric, str) else "val/loss"


def summarize_run_dir(run_dir: str | Path) -> RunSummary:
    """The summary of the run in `run_dir` (an empty one when it has no events yet)."""
    run_dir = Path(run_dir)
    summary = RunSummary(run_dir=run_dir)
    try:
        for ev in read_events(run_dir / EVENTS_FILE):
            _fold(summary, ev)
    except OSError as exc:  # e.g. permissions
        summary.unreadable = f"{run_dir / EVENTS_FILE}: {exc.strerror or exc}"
    config = _config(run_dir)
    summary.name = None if config.get("name") is None else str(config["name"])
    summary.best_metric = _best_metric(config)
    summary.best_checkpoint = read_pointer(run_dir, BEST)
    return summary


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s}s"


def format_value(value: float) -> str:
    return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"


def _wrap(label: str, items: list[str]) -> list[str]:
    if not items:
        return []
    lines = textwrap.wrap("  ".join(items), width=96, break_on_hyphens=False, break_long_words=False)
    return [f"  {label if i == 0 else '':<16} {line}" for i, line in enumerate(lines)]


def format_summary(summary: RunSummary, wall_s: float) -> str:
    """The closing lines of `cliplab train`: how it ended, where it is, final and best metrics."""
    progress = f"step {summary.step}/{summary.total_steps}" if summary.total_steps else f"step {summary.step}"
    status = f"{summary.status or 'ended'} at {progress}" + (f" ({summary.reason})" if summary.reason else "")
    final = [f"{k} {format_value(v)}" for k, v in summary.latest.items()
             if k in ("loss", "acc", "similarity") or k.startswith("val/")]
    best = [f"{k} {format_value(v)} @{step}" for k, (v, step) in summary.best.items()]
    lines = ["summary", f"  {'status':<16} {status}", f"  {'wall time':<16} {format_duration(wall_s)}",
             f"  {'run dir':<16} {summary.run_dir}", *_wrap("final", final), *_wrap("best (step)", best)]
    if summary.best_checkpoint is not None:
        chosen = summary.best.get(summary.best_metric or "")
        why = f"  ({summary.best_metric} {format_value(chosen[0])} at step {chosen[1]})" if chosen else ""
        lines.append(f"  {'best checkpoint':<16} {summary.best_checkpoint}{why}")
    return "\n".join(lines)
