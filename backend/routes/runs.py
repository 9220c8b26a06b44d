"""Runs: lifecycle (create, list, stop, resume, clone, delete) and what a run recorded."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, Path, Query, Response
from fastapi.responses import FileResponse, StreamingResponse

from backend.api_errors import declare
from backend.deps import RunDep, ServicesDep
from backend.errors import NotFound
from backend.models import RunClone, RunCreate, RunList, RunPublic, RunResume, RunUpdate
from backend.routing import ApiRoute
from backend.services import export, metrics, run_files, runs

router = APIRouter(prefix="/api/runs", tags=["runs"], route_class=ApiRoute)
MAX_INT = 2**62  # steps, seqs and offsets are 64-bit integers in the database


@router.get("", response_model=RunList)
def list_runs(
    svc: ServicesDep,
    status: Annotated[str | None, Query(description="Comma-separated statuses, e.g. running,queued")] = None,
    name: Annotated[str | None, Query(description="Case-insensitive substring of the name")] = None,
    tag: str | None = None,
    q: Annotated[str | None, Query(description="Case-insensitive substring of the name, notes, tags or id")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    sort: Annotated[str, Query(description="created_at, name, status or step; '-' for descending")] = "-created_at",
) -> RunList:
    return runs.list_runs(svc, status, name, tag, limit, offset, sort, q)


@router.post("", response_model=RunPublic, status_code=201)
def create_run(body: RunCreate, svc: ServicesDep) -> RunPublic:
    """Validate the config and queue the run (422 names every bad field)."""
    return runs.create_run(svc, body)


@router.get("/{run_id}", response_model=RunPublic)
def get_run(run: RunDep) -> RunPublic:
    return RunPublic.of(run)


@router.patch("/{run_id}", response_model=RunPublic)
def update_run(run: RunDep, svc: ServicesDep, body: RunUpdate) -> RunPublic:
    """Change the name, notes or tags, in any state (fields left out stay); 422 names a bad field."""
    return runs.update_run(svc, run.id, body)


@router.post("/{run_id}/stop", response_model=RunPublic, responses=declare(409))
def stop_run(run: RunDep, svc: ServicesDep) -> RunPublic:
    """SIGTERM (the trainer saves a checkpoint and exits), SIGKILL after the grace period."""
    return runs.stop_run(svc, run.id)


@router.post("/{run_id}/resume", response_model=RunPublic, responses=declare(409))
def resume_run(run: RunDep, svc: ServicesDep, body: Annotated[RunResume | None, Body()] = None) -> RunPublic:
    """Queue the run again; it continues in the same run directory from its latest checkpoint, or from the step
    directory `checkpoint` names (422 names the run's complete ones when it is not one of them)."""
    body = body or RunResume()
    return runs.resume_run(svc, run.id, body.overrides, body.checkpoint)


@router.post("/{run_id}/clone", response_model=RunPublic, status_code=201)
def clone_run(run: RunDep, svc: ServicesDep, body: Annotated[RunClone | None, Body()] = None) -> RunPublic:
    return runs.clone_run(svc, run.id, body or RunClone())


@router.delete("/{run_id}", status_code=204, responses=declare(409))
def delete_run(run: RunDep, svc: ServicesDep) -> Response:
    """Delete the record, its events and metric points, and its run directory (409 while it runs)."""
    runs.delete_run(svc, run.id)
    return Response(status_code=204)


@router.get("/{run_id}/config")
def run_config(run: RunDep) -> dict[str, Any]:
    return {"config": run.config, "yaml": yaml.safe_dump(run.config, sort_keys=False)}


@router.get("/{run_id}/metrics")
def metric_names(run: RunDep) -> dict[str, list[str]]:
    return {"names": run.metric_names}


@router.get("/{run_id}/metrics.csv", response_class=StreamingResponse, responses={200: {
    "description": "CSV `step,time,metric,value`, streamed", "content": {"text/csv": {"schema": {"type": "string"}}}}})
def metrics_csv(
    run: RunDep,
    svc: ServicesDep,
    names: Annotated[list[str] | None, Query(description=(
        "Metric names, repeated or comma-separated, read as GET /series reads them; default all (422 names any "
        "the run did not log)"))] = None,
) -> StreamingResponse:
    """Every stored point of the run's series as CSV, one row per value: `step,time,metric,value`, ordered by
    metric, step and seq; a NaN or infinite value is an empty `value` cell."""
    chosen = export.export_names(run, names)
    return StreamingResponse(export.csv_chunks(svc, run.id, chosen), media_type="text/csv",
                             headers={"Content-Disposition": export.attachment(run)})


@router.get("/{run_id}/series")
def series(
    run: RunDep,
    svc: ServicesDep,
    names: Annotated[list[str] | None, Query(description=(
        "Metric names, repeated (`names=a&names=b`) or comma-separated (`names=a,b`); a value that is one of the "
        "run's metric names is taken whole, commas included; default all"))] = None,
    start: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
    end: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
    buckets: Annotated[int, Query(ge=1, le=20_000)] = 1000,
) -> dict[str, Any]:
    """Each series in at most `buckets` step buckets keeping min, max and last (spikes survive)."""
    return svc.read(metrics.series, run, metrics.wanted_names(names, run.metric_names), start, end, buckets)


@router.get("/{run_id}/evals")
def evals(run: RunDep, svc: ServicesDep) -> list[dict[str, Any]]:
    return svc.read(metrics.evals, run.id)


@router.get("/{run_id}/matrices")
def matrices(run: RunDep, svc: ServicesDep) -> list[dict[str, Any]]:
    return svc.read(metrics.matrix_steps, run.id)


@router.get("/{run_id}/matrices/{step}")
def matrix(run: RunDep, svc: ServicesDep, step: Annotated[int, Path(ge=0, le=MAX_INT)]) -> dict[str, Any]:
    return svc.read(metrics.matrix_at, run.id, step)


@router.get("/{run_id}/events")
def events(
    run: RunDep,
    svc: ServicesDep,
    after: Annotated[int, Query(ge=-1, le=MAX_INT)] = -1,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """Stored events with seq > after, oldest first (the SSE backfill, for scripts)."""
    return svc.read(metrics.events_page, run, after, limit)


@router.get("/{run_id}/logs")
def logs(run: RunDep, svc: ServicesDep, tail: Annotated[int, Query(ge=1, le=10_000)] = 200) -> dict[str, Any]:
    """The last lines of the trainer's output (stdout.log; a SLURM job's --output file) and the last `log` events."""
    return run_files.run_logs(svc, run, tail)


@router.get("/{run_id}/checkpoints")
def checkpoints(run: RunDep, svc: ServicesDep) -> list[dict[str, Any]]:
    return run_files.run_checkpoints(svc, run)


@router.get("/{run_id}/checkpoints/{name}/download", response_model=None)
def download_checkpoint(run: RunDep, svc: ServicesDep, name: str, file: str | None = None) -> Response:
    """One file of a checkpoint (`?file=model.safetensors`), or the whole folder as a .tar stream."""
    run_dir = run_files.served_dir_of(svc, run)
    if run_dir is None:
        raise NotFound(f"run {run.id!r} was attached from a folder outside this server's readable folders; "
                       "its checkpoints stay where it trained")
    if file is not None:
        path = run_files.checkpoint_file(run_dir, name, file)
        return FileResponse(path, filename=f"{run.id}-{path.parent.name}-{path.name}")
    folder = run_files.checkpoint_dir(run_dir, name)
    return StreamingResponse(run_files.stream_tar(folder), media_type="application/x-tar", headers={
        "Content-Disposition": f'attachment; filename="{run.id}-{folder.name}.tar"'})
