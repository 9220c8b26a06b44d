"""The events a run's trainer sent (table events), stored once per (run_id, seq) with the JSON as sent."""

from __future__ import annotations

import json
from typing import Any

import pydantic_core
from sqlalchemy import JSON, BigInteger, text
from sqlmodel import Session, select

from backend.models import Event
from backend.store.bulk import insert_new

EVENT_COLUMNS = ("run_id", "seq", "kind", "time", "step", "payload")


def event_json(event: dict[str, Any]) -> str:
    """The text events.payload holds for `event`: compact strict JSON, UTF-8 as is (ValueError for NaN or
    Infinity). pydantic-core's serialiser writes it ~7x faster than json.dumps; the few events it cannot
    settle go to json.dumps, whose answer is the rule."""
    try:
        text = pydantic_core.to_json(event, inf_nan_mode="constants")
    except ValueError:  # a lone surrogate, or nesting deeper than pydantic-core's limit
        return _plain_json(event)
    if b"NaN" in text or b"Infinity" in text:  # a non-finite float, or a string that merely says so
        return _plain_json(event)
    return text.decode()


def _plain_json(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def add_events(session: Session, run_id: str, events: list[dict[str, Any]], texts: list[str] | None = None) -> None:
    """Store validated events of `run_id`; ones whose seq is stored already are left as they are. `texts`:
    each event's `event_json`, when the caller made them already (off the writer thread)."""
    texts = texts if texts is not None else [event_json(ev) for ev in events]
    insert_new(session, "events", EVENT_COLUMNS, [
        (run_id, ev["seq"], ev["kind"], float(ev["time"]), ev.get("step"), text) for ev, text in zip(events, texts)
    ])


# Both run once per ingested batch: fixed statements run through Core, as building a query and going through
# the ORM cost more than the query itself.
_STORED_SEQS = text("SELECT seq FROM events WHERE run_id = :run_id AND seq >= :lo AND seq <= :hi")
_OF_KIND_AFTER = text("SELECT seq, payload FROM events WHERE run_id = :run_id AND kind = :kind AND seq > :seq"
                      ).columns(seq=BigInteger, payload=JSON)


def stored_seqs(session: Session, run_id: str, lo: int, hi: int) -> set[int]:
    """The seqs in lo..hi that `run_id` has stored."""
    return set(session.connection().execute(_STORED_SEQS, {"run_id": run_id, "lo": lo, "hi": hi}).scalars())


def events_of_kind_after(session: Session, run_id: str, kind: str, seq: int) -> list[tuple[int, dict[str, Any]]]:
    """(seq, event) of the run's stored events of `kind` with a seq above `seq`."""
    rows = session.connection().execute(_OF_KIND_AFTER, {"run_id": run_id, "kind": kind, "seq": seq})
    return [(s, payload) for s, payload in rows]


def resumes_after(session: Session, run_id: str, seq: int = -1) -> list[tuple[int, int]]:
    """(seq, step) of the run's stored `running` status events after `seq`: each is a (re)start from `step`,
    which supersedes what earlier events logged past that step (`superseded`)."""
    rows = events_of_kind_after(session, run_id, "status", seq)
    return [(s, p["step"]) for s, p in rows
            if p.get("status") == "running" and isinstance(p.get("step"), int) and not isinstance(p["step"], bool)]


def superseded(event: dict[str, Any], resumes: list[tuple[int, int]]) -> bool:
    """Whether a later (re)start from an earlier step replaced `event` (seq, step): a crash resume or a rewind
    logs those steps again, from the weights that survived."""
    return any(event["seq"] < seq and event["step"] > step for seq, step in resumes)


def events_of_kind(session: Session, run_id: str, kind: str, limit: int | None = None,
                   newest: bool = False) -> list[dict[str, Any]]:
    """The run's events of `kind` in seq order: all, the first `limit`, or with `newest` the last `limit`."""
    query = select(Event.payload).where(Event.run_id == run_id, Event.kind == kind)
    query = query.order_by(Event.seq.desc() if newest else Event.seq)  # type: ignore[union-attr]
    if limit is not None:
        query = query.limit(limit)
    rows = list(session.exec(query))
    return rows[::-1] if newest else rows


def last_status_event(session: Session, run_id: str) -> dict[str, Any] | None:
    found = events_of_kind(session, run_id, "status", 1, newest=True)
    return found[0] if found else None


def matrix_steps(session: Session, run_id: str) -> list[tuple[int, int]]:
    """(step, seq) of the run's `matrix` events in seq order."""
    rows = session.exec(
        select(Event.step, Event.seq).where(Event.run_id == run_id, Event.kind == "matrix").order_by(Event.seq)
    ).all()
    return [(step, seq) for step, seq in rows]


def matrix_at(session: Session, run_id: str, step: int) -> dict[str, Any] | None:
    """The last `matrix` event recorded at `step` (a resumed run may record a step twice)."""
    return session.exec(
        select(Event.payload)
        .where(Event.run_id == run_id, Event.kind == "matrix", Event.step == step)
        .order_by(Event.seq.desc())  # type: ignore[union-attr]
        .limit(1)
    ).first()


def events_after(session: Session, run_id: str, after: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` of the run's events with seq > `after`, oldest first."""
    return list(session.exec(
        select(Event.payload).where(Event.run_id == run_id, Event.seq > after).order_by(Event.seq).limit(limit)
    ))
