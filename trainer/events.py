"""Writing a run's events (the schema is contract.events): the file, and the HTTP push.

An event is one JSON object: {"seq": int, "time": float, "kind": str, ...fields}. `seq` increases strictly
within a run, across resumes too. Rank 0 appends every event to <run_dir>/events.jsonl (the durable copy)
and, when CLIPLAB_SERVER and CLIPLAB_RUN_TOKEN are set, a background thread POSTs batches to
<server>/api/runs/<run_id>/events. The training step never waits on the network.
"""

from __future__ import annotations

import json
import math
import os
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from contract.events import (
    ENV_RUN_ID,
    ENV_SERVER,
    ENV_TOKEN,
    EVENT_KINDS,
    EVENT_MODELS,
    EVENTS_FILE,
    RUN_STATUSES,
    event_problems,
    last_seq,
)
from contract.text import without_surrogates


def warn(message: str) -> None:
    """A warning on stderr, which a launched run's log and an attached run's terminal both show."""
    print(f"cliplab: warning: {message}", file=sys.stderr, flush=True)


def http_error_detail(exc: urllib.error.HTTPError) -> str:
    """The server's reason for an error status: its `detail` (a 422's field errors joined), else the reason."""
    try:
        detail = json.loads(exc.read()).get("detail")
    except (ValueError, AttributeError, OSError):
        return exc.reason or ""
    if isinstance(detail, list):  # 422: [{"field", "message"}]
        return "; ".join(f"{d.get('field')}: {d.get('message')}" for d in detail if isinstance(d, dict))
    return str(detail)


def batch_refused(exc: Exception) -> bool:
    """Whether the server rejected the batch itself (bad token, unknown run, a seq too far ahead): retrying
    cannot help, and events.jsonl still holds everything for a backfill. 408 and 429 only ask for later."""
    return isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429)


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: send them as null so a diverging run still reports. Lone surrogates (a file
    name with undecodable bytes) become U+FFFD, which the server accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return without_surrogates(value)
    if isinstance(value, dict):
        return {without_surrogates(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _json_line(event: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The event made JSON-safe, and its line for events.jsonl. A clean event (every step's metrics) costs
    one serialisation; only one with NaN/inf or a \\uXXXX escape (maybe a lone surrogate) is walked."""
    try:
        line = json.dumps(event, separators=(",", ":"), allow_nan=False)
        if "\\ud" not in line:
            return event, line
    except ValueError:  # NaN or inf
        pass
    event = _json_safe(event)
    return event, json.dumps(event, separators=(",", ":"))


def _check_contract(event: dict[str, Any]) -> None:
    """ValueError naming each field of `event` that breaks contract.events' model for its kind: the server
    would refuse it, and the whole batch it was pushed in."""
    try:
        EVENT_MODELS[event["kind"]].model_validate(event)
    except ValidationError:
        problems = "; ".join(f"{field} {message}" for field, message in event_problems(event))
        raise ValueError(f"{event['kind']} event {event['seq']} breaks the event contract: {problems}") from None


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class HttpPusher:
    """Sends event batches to the backend from a daemon thread, retrying with exponential backoff."""

    def __init__(self, server: str, run_id: str, token: str, batch_size: int = 200, flush_s: float = 0.5,
                 timeout_s: float = 5.0, max_backoff_s: float = 30.0):
        self.url = f"{server.rstrip('/')}/api/runs/{run_id}/events"
        self.token = token
        self.batch_size = batch_size
        self.flush_s = flush_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.sent = 0
        self.failures = 0
        self._warned: set[str] = set()  # each kind of trouble is told once, not at every batch
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cliplab-event-push", daemon=True)
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        self._queue.put(event)

    def _take_batch(self) -> list[dict]:
        batch: list[dict] = []
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                break
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                break
            if item is None:
                self._stop.set()
                break
            batch.append(item)
        return batch

    def _post(self, batch: list[dict]) -> None:
        body = json.dumps({"events": batch}).encode()
        req = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            reply = resp.read()
        self._check_reply(reply)

    def _check_reply(self, reply: bytes) -> None:
        """Warn once when the server stored some values of the batch in their events only (past its limit of
        metric names per run): the user's script most likely makes a new name at every step."""
        try:
            uncharted = json.loads(reply).get("uncharted")
        except (ValueError, AttributeError):
            return
        if uncharted and "uncharted" not in self._warned:
            self._warned.add("uncharted")
            warn(f"the dashboard charts a limited number of metric names per run and this run reached it; new names "
                 f"such as {', '.join(map(repr, uncharted[:3]))} are kept in events.jsonl but not charted")

    def _refused(self, exc: urllib.error.HTTPError, batch: list[dict]) -> None:
        self.failures += 1
        if str(exc.code) not in self._warned:
            self._warned.add(str(exc.code))
            warn(f"the dashboard refused {len(batch)} event(s) (HTTP {exc.code}: {http_error_detail(exc)}); "
                 "events.jsonl keeps them, and further refusals of this kind are not reported")

    def _send_with_retry(self, batch: list[dict]) -> None:
        backoff = 0.25
        while True:
            try:
                self._post(batch)
                self.sent += len(batch)
                return
            except urllib.error.HTTPError as exc:
                if batch_refused(exc):
                    self._refused(exc, batch)
                    return
            except (urllib.error.URLError, OSError, TimeoutError):
                pass
            self.failures += 1
            if self._stop.is_set() and backoff > 2.0:
                return  # shutting down with the server away: give up, the file is the durable copy
            time.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)

    def _loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take_batch()
            if batch:
                self._send_with_retry(batch)

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(None)
        self._thread.join(timeout_s)


class EventWriter:
    """Appends events to <run_dir>/events.jsonl and optionally pushes them to the backend.

    `enabled=False` (ranks other than 0) makes every call a no-op, so callers need no rank checks.
    `hold=True` keeps events in memory, touching no file, until `release()` writes them (or `discard()`
    drops them): a run that turns out to have bad input then leaves no trace in a directory it never used.
    """

    def __init__(self, run_dir: str | os.PathLike, enabled: bool = True, server: str | None = None,
                 token: str | None = None, run_id: str | None = None, hold: bool = False,
                 connect: Callable[[], HttpPusher | None] | None = None):
        self.enabled = enabled
        self._connect = connect  # an attached run registers with its dashboard only once it is released
        self.path = Path(run_dir) / EVENTS_FILE
        self._lock = threading.Lock()
        self._file = None
        self._held: list[dict[str, Any]] | None = [] if hold else None
        self.pusher: HttpPusher | None = None
        if not enabled:
            return
        self.seq = last_seq(self.path) + 1  # continue numbering after a resume
        if not hold:
            self._open()
        server = server if server is not None else os.environ.get(ENV_SERVER)
        token = token if token is not None else os.environ.get(ENV_TOKEN)
        run_id = run_id if run_id is not None else os.environ.get(ENV_RUN_ID, self.path.parent.name)
        if server and token:
            self.pusher = HttpPusher(server, run_id, token)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() > 0 and not _ends_with_newline(self.path):
            self._file.write("\n")  # end a line torn by a killed writer so the next event starts whole

    def release(self) -> None:
        """Write (and push) the held events and stop holding; a no-op when nothing is held. With `connect`,
        its pusher (if it returns one) takes over the pushing from here on."""
        with self._lock:
            held, self._held = self._held, None
            if held is None or not self.enabled:
                return
            self._open()
            for event in held:
                self._write(json.dumps(event, separators=(",", ":")))
        if self._connect is not None:
            connect, self._connect = self._connect, None
            self.pusher = connect() or self.pusher
        for event in held:
            self._push(event)

    def discard(self) -> None:
        """Drop the held events; nothing more is written."""
        with self._lock:
            self._held = None
            self.enabled = self.enabled and self._file is not None

    def emit(self, kind: str, **fields: Any) -> dict[str, Any] | None:
        """Write (and push) one event of `kind` with the next seq; returns it as written (NaN/inf as null).
        ValueError, and no seq used, for an unknown kind or fields that break the kind's contract."""
        if not self.enabled:
            return None
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {EVENT_KINDS}")
        with self._lock:
            event, line = _json_line({"seq": self.seq, "time": time.time(), "kind": kind, **fields})
            _check_contract(event)
            self.seq += 1
            if self._held is not None:
                self._held.append(event)
                return event
            self._write(line)
        self._push(event)
        return event

    def _write(self, line: str) -> None:
        self._file.write(line + "\n")
        self._file.flush()

    def _push(self, event: dict[str, Any]) -> None:
        if self.pusher is not None:
            self.pusher.put(event)

    def status(self, status: str, reason: str | None = None, **fields: Any) -> dict | None:
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {RUN_STATUSES}")
        return self.emit("status", status=status, reason=reason, **fields)

    def log(self, message: str, level: str = "info") -> dict | None:
        return self.emit("log", level=level, message=message)

    def close(self) -> None:
        if not self.enabled:
            return
        self.release()  # held events nobody discarded are the run's record: keep them
        if self.pusher is not None:
            self.pusher.close()
        with self._lock:
            if self._file is not None:
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
