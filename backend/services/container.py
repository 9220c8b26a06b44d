"""The server's long-lived parts, built once per app: database, writer, broadcaster, file tail, launcher,
run-end notifier.

Routes get the `Services` container (deps.py) and hand it to the service functions as `svc`; the launcher
gets only the parts it uses, so nothing this module imports imports it back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from sqlalchemy.engine import Engine

from backend import store
from backend.db import DbWriter, make_engine, migrate, read
from backend.models import Run, RunPublic
from backend.services.ingest import EventFileTail, IngestOutcome, ingest_job, prepare_points
from backend.services.launcher import Launcher
from backend.services.notify import UNFINISHED_STATUSES, RunEndNotifier, build_notifier
from backend.services.streaming import Broadcaster
from backend.settings import Settings

T = TypeVar("T")
log = logging.getLogger("cliplab.ingest")


@dataclass
class Services:
    settings: Settings
    engine: Engine
    writer: DbWriter
    broadcaster: Broadcaster
    access_token: str | None = None
    tail: EventFileTail = field(default_factory=EventFileTail)
    _warned_uncharted: set[str] = field(default_factory=set)
    launcher: Launcher = field(init=False)
    notifier: RunEndNotifier | None = field(init=False)  # None: no webhook configured

    def __post_init__(self) -> None:
        self.notifier = build_notifier(self.settings)
        self.launcher = Launcher(self.settings, engine=self.engine, writer=self.writer, tail=self.tail,
                                 publish_run=self.publish_run, ingest=self.ingest)

    def read(self, fn: Callable[..., T], *args: Any) -> T:
        return read(self.engine, fn, *args)

    def publish_run(self, run: Run) -> RunPublic:
        """Tell the run-list and run streams what `run` looks like now; returns what they were sent. Every status
        change passes here, so this is where a run's end is announced to the notification webhooks too."""
        public = RunPublic.of(run)
        self.broadcaster.publish_run(public.model_dump(mode="json"))
        if self.notifier is not None:
            self.notifier.observe(public)  # queues at most: the webhooks are called from its own threads
        return public

    def start_notifier(self) -> None:
        """Start the webhook senders, seeded with the runs stored unfinished (before the launcher ends any)."""
        if self.notifier is not None:
            self.notifier.start(self.read(store.runs_in_status, UNFINISHED_STATUSES))

    def ingest(self, run_id: str, events: list[dict[str, Any]], texts: list[str] | None = None) -> IngestOutcome:
        """Store validated events (HTTP push or file backfill) and push the new ones to live streams. `texts`:
        their stored texts when the caller has them (checked_event_texts); made here otherwise. Texts, points
        and rollup blocks are made in the caller's thread: the single writer thread is what bounds ingest."""
        texts = texts if texts is not None else [store.event_json(ev) for ev in events]
        outcome = self.writer.call(ingest_job, run_id, events, texts, time.time(), self.settings.max_seq_ahead,
                                   prepare_points(run_id, events), self.settings.max_series_per_run, group=True)
        if outcome.uncharted and run_id not in self._warned_uncharted:  # once per run: it recurs every batch
            self._warned_uncharted.add(run_id)
            log.warning("run %s reached %d series (CLIPLAB_MAX_SERIES_PER_RUN); new names such as %r stay in its "
                        "events only", run_id, self.settings.max_series_per_run, outcome.uncharted[0])
        if outcome.accepted:
            self.broadcaster.publish_events(run_id, outcome.accepted)
            if outcome.run is not None:
                self.publish_run(outcome.run)
        return outcome

    def close(self) -> None:
        self.launcher.close()
        if self.notifier is not None:
            self.notifier.close()  # after the launcher: the ends it stored on the way out are sent too
        self.broadcaster.close()
        self.writer.close()
        self.engine.dispose()


def build_services(settings: Settings, access_token: str | None = None) -> Services:
    """Connect and migrate the database, construct the services and start the notifier's senders; `start()` the
    launcher separately."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.runs_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.db_url)
    migrate(engine)
    svc = Services(settings=settings, engine=engine, writer=DbWriter(engine), broadcaster=Broadcaster(),
                   access_token=access_token)
    svc.start_notifier()
    return svc
