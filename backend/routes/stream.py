"""Server-Sent Events: one run's events (resumable with Last-Event-ID) and the run list's changes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from backend.deps import RunDep, ServicesDep
from backend.models import Run, RunPublic
from backend.routes.runs import MAX_INT
from backend.routing import ApiRoute
from backend.services import metrics
from contract.text import without_surrogates

router = APIRouter(prefix="/api", tags=["stream"], route_class=ApiRoute)
BACKFILL_PAGE = 500
RETRY_MS = 2000
_SEQ_RE = re.compile(r"-?[0-9]{1,30}")


def _event(ev: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(event=ev["kind"], data=without_surrogates(ev), id=str(ev["seq"]))


def _run_message(body: dict[str, Any]) -> ServerSentEvent:
    # Text stored before the server refused lone surrogates must not end the stream.
    return ServerSentEvent(event="deleted" if body.get("deleted") else "run", data=without_surrogates(body))


def _cursor(last_event_id: str | None, after: int | None, run: Run) -> int:
    # A header is whatever the client sends: only ASCII digits (str.isdigit also takes "²", which int()
    # refuses), with at most one minus; anything else is ignored.
    if last_event_id is not None and _SEQ_RE.fullmatch(last_event_id.strip()):
        return max(-1, min(int(last_event_id), MAX_INT))
    return after if after is not None else run.last_seq


@router.get("/runs/{run_id}/stream", response_class=EventSourceResponse)
async def run_stream(
    run: RunDep,
    svc: ServicesDep,
    after: Annotated[int | None, Query(ge=-1, le=MAX_INT, description="Send stored events with seq > after")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterable[ServerSentEvent]:
    """A `run` event with the run's state, then every event with seq > Last-Event-ID (or `after`; default:
    only new ones), then live events as they arrive; `id:` is the event seq."""
    cursor = _cursor(last_event_id, after, run)
    async with svc.broadcaster.subscribe(run.id) as sub:  # subscribe first: nothing slips between backfill and live
        yield ServerSentEvent(event="run", data=without_surrogates(RunPublic.of(run).model_dump(mode="json")),
                              retry=RETRY_MS)
        while True:
            page = (await run_in_threadpool(svc.read, metrics.events_page, run, cursor, BACKFILL_PAGE))["events"]
            for ev in page:
                cursor = ev["seq"]
                yield _event(ev)
            if len(page) < BACKFILL_PAGE:
                break
        while (message := await sub.get()) is not None:
            kind, body = message
            if kind == "run":
                yield _run_message(body)
            elif body["seq"] > cursor:
                cursor = body["seq"]
                yield _event(body)


@router.get("/stream", response_class=EventSourceResponse)
async def runs_stream(svc: ServicesDep) -> AsyncIterable[ServerSentEvent]:
    """`run` events (a Run) whenever a run is created or changes status or progress; `deleted` ({"id"})."""
    async with svc.broadcaster.subscribe(None) as sub:
        yield ServerSentEvent(comment="connected", retry=RETRY_MS)
        while (message := await sub.get()) is not None:
            yield _run_message(message[1])
