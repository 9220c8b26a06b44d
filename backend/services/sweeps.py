"""Sweeps (`POST /api/sweeps`): a base config and its swept settings expanded by contract/sweep.py, every run's
config checked as `POST /api/runs` checks it, then all of them queued in one write, or none.

`cliplab sweep` and the dashboard's sweep form both come here, so a seed draws the same runs in either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backend.errors import Invalid
from backend.models import PlannedRun, SweepAnswer, SweepCreate, SweepProblem
from backend.services import runs
from contract.config import OverrideError, RunConfig, apply_overrides
from contract.sweep import (
    SweepError,
    axis,
    base_name,
    default_tag,
    run_names,
    sweep_points,
    table_link,
    value_text,
)

if TYPE_CHECKING:
    from backend.services.container import Services

RunCheck = tuple[RunConfig | None, list[dict[str, str]]]  # a run's checked config, or the errors refusing it
Refusal = tuple[str, str | None, str]  # (swept key or field, the swept value or None, message): reported once


def run_sweep(svc: "Services", body: SweepCreate) -> SweepAnswer:
    """The sweep's runs and the server's verdict on each. A dry run answers that, whatever it is (as
    /api/configs/validate does, so a form can ask at every keystroke); otherwise a refusal is Invalid naming the
    settings and values refused, with nothing created, and an accepted sweep is queued whole."""
    try:
        answer, cfgs, where = _planned(svc, body)
    except Invalid as exc:
        if not body.dry_run:
            raise
        problems = [SweepProblem(**error) for error in exc.errors]
        return SweepAnswer(valid=False, runs=[], problems=problems, keys=[], tag=(body.tags or [""])[0], link="")
    if body.dry_run:
        return answer
    if answer.problems:
        raise Invalid([p.model_dump() for p in answer.problems])
    answer.created = runs.insert_runs(svc, cfgs, where)
    return answer


def _planned(svc: "Services", body: SweepCreate) -> tuple[SweepAnswer, list[RunConfig], runs.Placement]:
    """(the plan with every run's problems, the accepted configs, where the runs would train); Invalid when the
    sweep cannot be listed or placed at all."""
    points = _points(body)
    base = base_name(body.config, body.name)
    names = run_names(base, points)
    tags = list(body.tags or [default_tag(base)])
    where = runs.new_run_placement(svc, body.executor, body.slurm, body.gpus, body.nproc)
    checks = [_checked_run(svc, where, body.config, point, name, tags) for point, name in zip(points, names)]
    problems = _problems(points, names, [errors for _, errors in checks])
    cfgs = [cfg for cfg, _ in checks if cfg is not None]
    keys = list(points[0])
    metric = cfgs[0].checkpoint.best_metric if cfgs and cfgs[0].data.val else None
    answer = SweepAnswer(valid=not problems, runs=[PlannedRun(name=n, overrides=p) for n, p in zip(names, points)],
                         problems=problems, keys=keys, tag=tags[0], link=table_link(tags[0], keys, metric))
    return answer, cfgs, where


def _points(body: SweepCreate) -> list[dict[str, Any]]:
    """Each run's swept settings; Invalid naming the axis, `random` or `max_runs` when the sweep cannot be listed."""
    try:
        axes = [axis(a.key, a.values, i) for i, a in enumerate(body.axes)]
        return sweep_points(axes, body.random, body.seed, body.max_runs)
    except SweepError as exc:
        raise Invalid.one(exc.field, str(exc)) from None


def _checked_run(svc: "Services", where: runs.Placement, base: dict[str, Any], point: dict[str, Any], name: str,
                 tags: list[str]) -> RunCheck:
    """One run's config checked as creating it would check it (the config's own tags kept, the sweep's added)."""
    try:
        cfg = runs.checked_new_config(svc, where, apply_overrides(base, point), name)
        cfg.tags = runs.checked_tags(list(dict.fromkeys([*cfg.tags, *tags])))
        return cfg, []
    except OverrideError as exc:
        return None, [{"field": exc.key, "message": str(exc)}]
    except Invalid as exc:
        return None, exc.errors


def _culprit(point: dict[str, Any], field: str) -> str | None:
    """The swept key an error's field is about (the field itself, inside it, or the section holding it)."""
    return next((k for k in point if field == k or field.startswith(k + ".") or k.startswith(field + ".")), None)


def _problems(points: list[dict[str, Any]], names: list[str],
              errors_per_run: list[list[dict[str, str]]]) -> list[SweepProblem]:
    """Each distinct refusal once, naming the swept setting and value (else the field) and the first run it
    refuses: a bad value in a grid is in many runs, a bad base config in all of them."""
    first: dict[Refusal, tuple[int, dict[str, str]]] = {}
    runs_with: dict[Refusal, set[int]] = {}
    for index, errors in enumerate(errors_per_run):
        for error in errors:
            key = _culprit(points[index], error["field"])
            ident = (key or error["field"], value_text(points[index][key]) if key else None, error["message"])
            first.setdefault(ident, (index, error))
            runs_with.setdefault(ident, set()).add(index)
    return [_problem(ident, names[index], error, len(runs_with[ident]) - 1)
            for ident, (index, error) in first.items()]


def _problem(ident: Refusal, run_name: str, error: dict[str, str], others: int) -> SweepProblem:
    key, value, message = ident
    where = f"run “{run_name}”" + (f", and {others} other run{'s' * (others > 1)}" if others else "")
    if value is None:  # not about a swept setting: the base config, or the run's resources
        return SweepProblem(field=key, message=f"{message} ({where})")
    detail = message if error["field"] == key else f"{error['field']}: {message}"
    return SweepProblem(field=key, message=f"{key}={value} ({where}): {detail}")
