"""Attached runs: a trainer started outside the server registers its run and polls for a stop request."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api_errors import declare
from backend.deps import AuthorizedRunDep, ServicesDep
from backend.models import RunAttach, RunAttached, RunControl
from backend.routing import ApiRoute
from backend.services import attach

router = APIRouter(prefix="/api/runs", tags=["attach"], route_class=ApiRoute)


@router.post("/attach", response_model=RunAttached, status_code=201, responses=declare(404, 409))
def attach_run(body: RunAttach, svc: ServicesDep) -> RunAttached:
    """Register a run started anywhere (or continue one: `run_id`); returns the run and its ingest token.
    Needs the server's access token when the server has one."""
    return attach.attach_run(svc, body)


@router.get("/{run_id}/control", response_model=RunControl, responses=declare(403))
def run_control(run: AuthorizedRunDep) -> RunControl:
    """Polled by an attached trainer with its run token: stop when `stop_requested`."""
    return attach.control(run)
