"""Sweeps: many runs from one base config and the settings to sweep (the dashboard's sweep form, `cliplab sweep`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from backend.deps import ServicesDep
from backend.models import SweepAnswer, SweepCreate
from backend.routing import ApiRoute
from backend.services import sweeps

router = APIRouter(prefix="/api", tags=["sweeps"], route_class=ApiRoute)
DRY_RUN = {200: {"model": SweepAnswer, "description": "dry_run: the planned runs and the server's verdict on "
                                                       "each (`valid`, `problems`); nothing created."}}


@router.post("/sweeps", response_model=SweepAnswer, status_code=201, responses=DRY_RUN)
def create_sweep(body: SweepCreate, svc: ServicesDep, response: Response) -> SweepAnswer:
    """Expand the sweep, check every run's config as POST /api/runs does, then queue them all (201). A refused
    value, a sweep over `max_runs` or a bad axis is 422 naming it, and nothing is created."""
    if body.dry_run:
        response.status_code = 200
    return sweeps.run_sweep(svc, body)
