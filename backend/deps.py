"""Route dependencies: the app's services and the run a path names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from backend.models import Run
from backend.services import runs
from backend.services.container import Services
from backend.services.ingest import token_matches


async def get_services(request: Request) -> Services:  # async: no threadpool hop for an attribute read
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


def existing_run(run_id: str, svc: ServicesDep) -> Run:
    return runs.get_run(svc, run_id)


RunDep = Annotated[Run, Depends(existing_run)]


def run_with_token(run: RunDep, authorization: Annotated[str | None, Header()] = None) -> Run:
    """The run a trainer posts to, if the request carries that run's own token."""
    require_run_token(run.id, run.token_hash, authorization)
    return run


def run_id_with_token(run_id: str, svc: ServicesDep, authorization: Annotated[str | None, Header()] = None) -> str:
    """The id of the run a trainer posts events to, if the request carries that run's own token; reads only
    the token's hash (this guards every event batch)."""
    require_run_token(run_id, runs.token_hash(svc, run_id), authorization)
    return run_id


def require_run_token(run_id: str, token_hash: str | None, authorization: str | None) -> None:
    """401 without a Bearer token, 403 unless it is the token of run `run_id` (hashed as `token_hash`)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, f"missing run token: send 'Authorization: Bearer <CLIPLAB_RUN_TOKEN of {run_id}>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not token_matches(token.strip(), token_hash):
        raise HTTPException(403, f"this token may not write events of run {run_id!r} (wrong run, or the run "
                                 "is not running)")


AuthorizedRunDep = Annotated[Run, Depends(run_with_token)]
AuthorizedRunIdDep = Annotated[str, Depends(run_id_with_token)]
