"""Run rows (table runs) and the checkpoints recorded for them (table checkpoints)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Callable, Sequence

from sqlalchemy import String, cast, func, or_, select, text
from sqlmodel import Session

from backend.models import ACTIVE_STATUSES, Checkpoint, Run

# ---- one run ---------------------------------------------------------------------------------------------


def new_run_id(now: float) -> str:
    return f"r-{time.strftime('%Y%m%d', time.gmtime(now))}-{secrets.token_hex(3)}"


def unused_run_id(session: Session, now: float) -> str:
    """A new run id no stored run has."""
    run_id = new_run_id(now)
    while session.get(Run, run_id) is not None:
        run_id = new_run_id(now)
    return run_id


def get_run(session: Session, run_id: str) -> Run | None:
    return session.get(Run, run_id)


def run_token_hash(session: Session, run_id: str) -> tuple[str | None] | None:
    """(token_hash,) of run `run_id`, None when there is no such run. One column through Core: it guards
    every event batch, where loading the whole run through the ORM cost more than storing the batch."""
    return session.connection().execute(_TOKEN_HASH, {"run_id": run_id}).first()


_TOKEN_HASH = text("SELECT token_hash FROM runs WHERE id = :run_id")


def save_run(session: Session, run: Run) -> Run:
    """Add a new run or keep the changes to a loaded one (written when the job commits)."""
    session.add(run)
    return run


def edit_run(session: Session, run_id: str, edit: Callable[[Run], None],
             only_if: Callable[[Run], bool] | None = None) -> Run | None:
    """Load run `run_id`, apply `edit` to it and save it; None, and nothing changed, when the run is gone or
    `only_if` says no."""
    run = session.get(Run, run_id)
    if run is None or (only_if is not None and not only_if(run)):
        return None
    edit(run)
    return save_run(session, run)


def delete_run(session: Session, run: Run) -> None:
    """Delete a loaded run; its metric points, events and checkpoint rows go with it (ON DELETE CASCADE)."""
    session.delete(run)


# ---- runs by state ---------------------------------------------------------------------------------------


def runs_in_status(session: Session, statuses: Sequence[str], attached: bool | None = None) -> list[Run]:
    """The runs whose status is one of `statuses`; only launched (False) or attached (True) ones if given."""
    query = select(Run).where(Run.status.in_(statuses))
    if attached is not None:
        query = query.where(Run.attached == attached)
    return list(session.execute(query).scalars())


def active_launched_runs(session: Session) -> list[Run]:
    """Active runs this server launched (attached runs have no process here)."""
    return runs_in_status(session, ACTIVE_STATUSES, attached=False)


def watched_launched_runs(session: Session) -> list[Run]:
    """Launched runs with a job somewhere: the active ones and those a scheduler holds in its queue."""
    return list(session.execute(select(Run).where(
        Run.status.in_(ACTIVE_STATUSES) | ((Run.status == "queued") & Run.slurm_job_id.is_not(None)),
        Run.attached == False)).scalars())  # noqa: E712 - SQL, not Python


def queued_unsubmitted_runs(session: Session) -> list[Run]:
    """Queued runs no scheduler has yet, oldest first."""
    return list(session.execute(select(Run).where(Run.status == "queued", Run.slurm_job_id.is_(None))
                                .order_by(Run.created_at, Run.id)).scalars())


def launched_run_in_dir(session: Session, run_dir: str) -> Run | None:
    """The run this server launched in `run_dir`, if any."""
    return session.execute(select(Run).where(
        Run.run_dir == run_dir, Run.attached == False)).scalars().first()  # noqa: E712 - SQL, not Python


def run_holding_token(session: Session, token_hash: str) -> str | None:
    """The id of the run whose current ingest token has hash `token_hash`, if any (a scan, unindexed: it only
    words the refusal of a token that is not the run's own)."""
    return session.execute(select(Run.id).where(Run.token_hash == token_hash)).scalars().first()


def silent_attached_runs(session: Session, statuses: Sequence[str], seen_before: float,
                         limit: int | None = None) -> list[Run]:
    """Attached runs in one of `statuses` last heard from before `seen_before` (unix seconds)."""
    query = select(Run).where(Run.attached == True, Run.status.in_(statuses),  # noqa: E712 - SQL, not Python
                              Run.last_seen < seen_before).limit(limit)
    return list(session.execute(query).scalars())


# ---- the run list ----------------------------------------------------------------------------------------


def run_page(session: Session, statuses: list[str], name: str | None, tag: str | None, q: str | None,
             sort_key: str, descending: bool, limit: int, offset: int) -> tuple[int, list[Run]]:
    """(how many runs match, the page of them `offset`.. in `sort_key` order): statuses (any of; [] for all),
    a case-insensitive substring of the name, a tag, and `q`: a substring of the name, notes, tags or id."""
    query = select(Run)
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if name:
        query = query.where(func.lower(Run.name).contains(name.lower(), autoescape=True))
    if q and q.strip():
        text = q.strip().lower()
        query = query.where(or_(*(func.lower(column).contains(text, autoescape=True)
                                  for column in (Run.name, Run.notes, cast(Run.tags, String), Run.id))))
    if tag:
        # Tags are a JSON list; matching the quoted JSON string keeps this portable (SQLite and PostgreSQL).
        query = query.where(cast(Run.tags, String).contains(json.dumps(tag), autoescape=True))
    column = func.lower(Run.name) if sort_key == "name" else getattr(Run, sort_key)
    order = column.desc() if descending else column.asc()
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    rows = session.execute(query.order_by(order, Run.id).limit(limit).offset(offset)).scalars().all()
    return total, list(rows)


# ---- checkpoints -----------------------------------------------------------------------------------------


def checkpoints_of(session: Session, run_id: str) -> list[Checkpoint]:
    return list(session.execute(select(Checkpoint).where(Checkpoint.run_id == run_id)).scalars())


def record_checkpoint(session: Session, run_id: str, name: str, step: int, kind: str, path: str,
                      when: float) -> None:
    """Add or update the checkpoint `name` of a run."""
    row = session.get(Checkpoint, (run_id, name)) or Checkpoint(run_id=run_id, name=name)
    row.step, row.kind, row.path, row.time = step, kind, path, when
    session.add(row)
