"""In-process fan-out of run events and run changes to Server-Sent-Event subscribers.

Publishers (the ingest path, the launcher thread) call `publish_*` from any thread; each subscriber owns a
bounded asyncio queue on the server's event loop. A subscriber that falls too far behind is closed rather
than allowed to grow memory: its client reconnects with Last-Event-ID and the backfill from the database
fills the gap.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

Message = tuple[str, dict[str, Any]]  # ("event", event) | ("run", run)


class Subscriber:
    def __init__(self, maxsize: int):
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=maxsize)
        self.dropped = False

    def offer(self, message: Message | None) -> None:
        if self.dropped:
            return
        if message is None:
            self._close()
            return
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped = True
            self._close()

    def _close(self) -> None:
        while not self.queue.empty():  # make room for the end marker
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    async def get(self) -> Message | None:
        return await self.queue.get()


class Broadcaster:
    def __init__(self, queue_size: int = 5000):
        self.queue_size = queue_size
        self._loop: asyncio.AbstractEventLoop | None = None
        self._by_run: dict[str, set[Subscriber]] = defaultdict(set)
        self._run_list: set[Subscriber] = set()
        self.closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the server's event loop (done in the app's lifespan)."""
        self._loop = loop

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def publish_events(self, run_id: str, events: list[dict[str, Any]]) -> None:
        """New events of one run, in seq order, to that run's stream."""
        if events:
            self._call(self._deliver_events, run_id, events)

    def publish_run(self, run: dict[str, Any]) -> None:
        """A changed run record, to the run-list stream and to that run's stream."""
        self._call(self._deliver_run, run)

    def _deliver_events(self, run_id: str, events: list[dict[str, Any]]) -> None:
        for sub in list(self._by_run.get(run_id, ())):
            for event in events:
                sub.offer(("event", event))

    def _deliver_run(self, run: dict[str, Any]) -> None:
        for sub in list(self._run_list) + list(self._by_run.get(run["id"], ())):
            sub.offer(("run", run))

    @asynccontextmanager
    async def subscribe(self, run_id: str | None = None) -> AsyncIterator[Subscriber]:
        """Subscribe to one run (`run_id`) or to the run list (None) for the duration of the block."""
        sub = Subscriber(self.queue_size)
        group = self._run_list if run_id is None else self._by_run[run_id]
        group.add(sub)
        if self.closed:
            sub.offer(None)
        try:
            yield sub
        finally:
            group.discard(sub)
            if run_id is not None and not group:
                self._by_run.pop(run_id, None)

    def close(self) -> None:
        """End every stream (server shutdown), so open SSE responses finish instead of holding it up."""
        self.closed = True
        self._call(self._close_all)

    def _close_all(self) -> None:
        for sub in list(self._run_list) + [s for subs in self._by_run.values() for s in subs]:
            sub.offer(None)
