"""Route dependencies: the app's services and the run a path names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from backend.models import Run
from backend.services import runs
from backend.services.container import Services
from backend.services.ingest import token_matches


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def existing_run(run_id: str, svc: ServicesDep) -> Run:
    return runs.get_run(svc, run_id)


RunDep = Annotated[Run, Depends(existing_run)]


def run_with_token(run: RunDep, authorization: Annotated[str | None, Header()] = None) -> Run:
    """The run a trainer posts to, if the request carries that run's own token."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, f"missing run token: send 'Authorization: Bearer <CLIPLAB_RUN_TOKEN of {run.id}>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not token_matches(token.strip(), run.token_hash):
        raise HTTPException(403, f"this token may not write events of run {run.id!r} (wrong run, or the run "
                                 "is not running)")
    return run


AuthorizedRunDep = Annotated[Run, Depends(run_with_token)]
