"""Trainer event ingestion: POST /api/runs/{id}/events with the run's Bearer token."""

from __future__ import annotations

from fastapi import APIRouter

from backend.api_errors import declare
from backend.deps import AuthorizedRunIdDep, ServicesDep
from backend.errors import NotFound
from backend.fast_json import FastJsonRoute
from backend.models import EventBatch, IngestResult
from backend.services.ingest import checked_event_texts

router = APIRouter(prefix="/api/runs", tags=["ingest"], route_class=FastJsonRoute)


@router.post("/{run_id}/events", response_model=IngestResult, responses=declare(409))
def ingest_events(authorized_run_id: AuthorizedRunIdDep, body: EventBatch, svc: ServicesDep) -> IngestResult:
    """Store a batch of the run's events; re-sent events (same seq) count as duplicates, not errors. A seq
    more than CLIPLAB_MAX_SEQ_AHEAD past the highest stored one is a 409 naming the accepted range. Metric
    names past the run's CLIPLAB_MAX_SERIES_PER_RUN are stored in their events only, and listed in `uncharted`."""
    run_id = authorized_run_id
    texts = checked_event_texts(body.events, svc.settings.max_events_per_batch)
    outcome = svc.ingest(run_id, body.events, texts)
    if outcome.run is None:
        raise NotFound(f"run {run_id!r} was deleted")
    return IngestResult(accepted=len(outcome.accepted), duplicates=outcome.duplicates,
                        uncharted=outcome.uncharted[:20])
