"""Run-end notifications: a JSON POST to each configured webhook when a run ends (`cliplab serve --notify-url`).

The body suits Slack, Mattermost (`text`) and Discord (`content`) incoming webhooks as it is, and carries the
run's fields for a program (`run`). Every status change reaches the dashboard's streams through
`Services.publish_run`, which hands the run to `RunEndNotifier.observe`: the one hook. Each URL has a queue and
a thread that POSTs with a short timeout and a few retries, so a slow or dead webhook never holds up a request,
the launcher or ingestion, and a failed POST changes nothing stored.

Which ends are announced (`EndTracker`): an end this server process saw happen, once per end. A run counts as
seen unfinished when this process published it queued/starting/running/stopping/lost, or found it so in the
database at start (a run whose trainer ended while the server was down ends after the restart, and is
announced then). A run stored as ended before the start was announced by the server that stored its end (or
ended before notifications were set up): it is never announced again, whatever later touches it (a rename, a
late event). No column or file is needed: the stored status is the marker. The price: an end stored just
before a crash, whose POST had not gone out, is not announced by the next server (at most once, never twice).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPException
from typing import Any, Sequence
from urllib.parse import quote

from backend.errors import Conflict
from backend.models import NotificationDelivery, NotificationTest, Run, RunPublic
from backend.settings import WILDCARD_HOSTS, Settings, shown_url
from contract.version import package_version

log = logging.getLogger("cliplab.notify")

ENDED_STATUSES = ("finished", "failed", "stopped", "lost")
UNFINISHED_STATUSES = ("queued", "starting", "running", "stopping", "lost")  # lost: it may still end
ATTEMPTS = 3  # a POST refused by a connection error, a 5xx or a 429 is tried again after 1 s, then 2 s
BACKOFF_S = 1.0
MAX_PENDING = 1000  # per URL: a webhook down for long must not grow the server's memory without bound
TEXT_LIMIT = 1900  # Discord refuses content over 2000 characters
REASON_LIMIT = 300
SYMBOLS = {"finished": "✅", "failed": "❌", "stopped": "⏹", "lost": "❓"}
WORDS = {"finished": "finished", "failed": "failed", "stopped": "was stopped", "lost": "is lost (not heard from)"}


# ---- the message -------------------------------------------------------------------------------------------


def run_link(link_base: str, run_id: str) -> str:
    """The dashboard page of a run (no access token: the reader signs in as usual)."""
    return f"{link_base}/#/runs/{quote(run_id, safe='')}"


def _inert(text: str, limit: int) -> str:
    """User text on one line that no chat reads as markup or a mention (a run named `@channel` or `<!here>`
    would otherwise ping everyone): `<`/`>` become look-alikes, `@` gets a zero-width space."""
    text = re.sub(r"\s+", " ", text).strip().replace("<", "‹").replace(">", "›").replace("@", "@\u200b")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def headline_best(run: RunPublic) -> tuple[str, float] | None:
    """The best value of the metric that picks the run's best checkpoint (val/loss unless configured), else
    of its first eval metric; None before any eval."""
    if not run.best:
        return None
    wanted = ((run.config or {}).get("checkpoint") or {}).get("best_metric") or "val/loss"
    name = wanted if wanted in run.best else next(iter(run.best))
    return name, run.best[name]


def notification_text(run: RunPublic, link: str) -> str:
    """One line a person reads: what ended, why, how far it got, its best value, and where to look."""
    word = WORDS.get(run.status, run.status)
    head = f"{SYMBOLS.get(run.status, '•')} cliplab run “{_inert(run.name, 200)}” ({run.id}) {word}"
    parts = [head + (f": {_inert(run.reason, REASON_LIMIT)}" if run.reason else "")]
    parts.append(f"step {run.step}/{run.total_steps}" if run.total_steps else f"step {run.step}")
    best = headline_best(run)
    if best is not None:
        parts.append(f"best {_inert(best[0], 100)} {best[1]:.4g}")
    text = " · ".join(parts)
    room = TEXT_LIMIT - len(link) - 3
    return f"{text if len(text) <= room else text[:room - 1] + '…'} · {link}"


def notification_body(run: RunPublic, link_base: str) -> dict[str, Any]:
    """The JSON POSTed for a run end: `text` (Slack, Mattermost), `content` (Discord) and the run's fields."""
    link = run_link(link_base, run.id)
    text = notification_text(run, link)
    host = run.attached_host or run.slurm_nodelist or socket.gethostname()
    return {"text": text, "content": text, "run": {
        "id": run.id, "name": run.name, "status": run.status, "reason": run.reason, "step": run.step,
        "total_steps": run.total_steps, "best": run.best, "latest": run.latest, "link": link, "tags": run.tags,
        "attached": run.attached, "host": host}}


def check_body(link_base: str) -> dict[str, Any]:
    """The test route's message: the same shape, `test: true` and no run."""
    text = f"cliplab test notification from {link_base}: this webhook will hear when runs end"
    return {"text": text, "content": text, "test": True, "run": None}


# ---- delivery ----------------------------------------------------------------------------------------------


def post_json(url: str, body: dict[str, Any], timeout_s: float) -> tuple[int | None, str | None]:
    """POST `body` as JSON once: (the HTTP status or None, None when it was taken (2xx) or why not)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"cliplab/{package_version()}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, None
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, f"HTTP {exc.code} {exc.reason}".strip()
    except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        if isinstance(reason, TimeoutError):
            return None, f"no answer within {timeout_s:g}s"
        return None, str(reason) or type(reason).__name__


def worth_retrying(status: int | None) -> bool:
    """A connection error, a 5xx or a 429 may pass later; another 4xx (a wrong or revoked URL) will not."""
    return status is None or status >= 500 or status == 429


class WebhookChannel:
    """One webhook: its queue of bodies and the thread that POSTs them in order, retrying with backoff.

    A URL that keeps failing is logged once, with the reason, until a POST to it succeeds again.
    """

    def __init__(self, url: str, index: int, timeout_s: float):
        self.url, self.index, self.timeout_s = url, index, timeout_s
        self.shown = shown_url(url)
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(MAX_PENDING)
        self._closing = threading.Event()
        self._failing = self._overflowed = False
        self._thread = threading.Thread(target=self._loop, name=f"cliplab-notify-{index}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def put(self, body: dict[str, Any]) -> None:
        """Queue `body` for delivery; never waits (a full queue drops it, logged once)."""
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            if not self._overflowed:
                self._overflowed = True
                log.warning("notifications to %s: %d are waiting, so newer ones are dropped until it catches up",
                            self.shown, MAX_PENDING)

    def stop(self) -> None:
        """From now on: deliver what is queued with one try each, then end the thread."""
        self._closing.set()

    def join(self, wait_s: float) -> None:
        if self._thread.is_alive():
            self._thread.join(max(0.0, wait_s))

    def _loop(self) -> None:
        while True:
            try:
                body = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                self.deliver(body)
            except Exception:  # noqa: BLE001 - a bug here must not end the channel
                log.exception("notification to %s failed", self.shown)

    def deliver(self, body: dict[str, Any]) -> None:
        """POST `body`, retrying what may pass later; log the first failure of a run of them."""
        tries, error = 0, None
        while True:
            tries += 1
            status, error = post_json(self.url, body, self.timeout_s)
            if error is None or not worth_retrying(status) or tries >= ATTEMPTS:
                break
            if self._closing.wait(BACKOFF_S * 2 ** (tries - 1)):
                break  # shutting down: no more waiting
        if error is None:
            if self._failing:
                log.info("notifications to %s are delivered again", self.shown)
            self._failing = self._overflowed = False
        elif not self._failing:
            self._failing = True
            what = f"run {body['run']['id']} {body['run']['status']}" if body.get("run") else "a notification"
            log.warning("could not notify %s of %s after %d tr%s: %s (further failures of this webhook are not "
                        "logged until one gets through)", self.shown, what, tries, "y" if tries == 1 else "ies",
                        error)


# ---- which publishes are ends ------------------------------------------------------------------------------


def end_key(status: str, finished_at: float | None, attempts: int) -> tuple[Any, ...]:
    """What tells one end from another: a terminal status with its end time (each attempt ends at its own
    time), or `lost` once per attempt (a run that comes back and falls silent again is not announced twice)."""
    return ("lost", attempts) if status == "lost" else (status, finished_at)


class EndTracker:
    """Decides which published run states are ends to announce: see the module docstring."""

    def __init__(self) -> None:
        self._unfinished: set[str] = set()
        self._announced: dict[str, tuple[Any, ...]] = {}  # run id -> its last end seen
        self._lock = threading.Lock()

    def seed(self, runs: Sequence[Run]) -> None:
        """The runs stored unfinished at start; a lost one's silence was announced by the server before."""
        with self._lock:
            for run in runs:
                self._unfinished.add(run.id)
                if run.status == "lost":
                    self._announced[run.id] = end_key(run.status, run.finished_at, len(run.attempts))

    def is_new_end(self, run: RunPublic) -> bool:
        """Whether `run`, as just published, is an end this process saw happen and has not seen before."""
        with self._lock:
            if run.status not in ENDED_STATUSES:
                self._unfinished.add(run.id)
                return False
            if run.id not in self._unfinished:
                return False  # it ended before this server started
            key = end_key(run.status, run.finished_at, len(run.attempts))
            if self._announced.get(run.id) == key:
                return False  # the same end published again (a rename, a late event)
            self._announced[run.id] = key
            if run.status != "lost":
                self._unfinished.discard(run.id)
            return True


class RunEndNotifier:
    """The hook `Services.publish_run` calls with every run state it publishes; POSTs the ends to announce."""

    def __init__(self, urls: list[str], statuses: list[str], link_base: str, timeout_s: float):
        self.statuses, self.link_base, self.timeout_s = set(statuses), link_base, timeout_s
        self.channels = [WebhookChannel(url, i, timeout_s) for i, url in enumerate(urls)]
        self.tracker = EndTracker()

    def start(self, unfinished: Sequence[Run]) -> None:
        """Start the senders, knowing which stored runs are unfinished (before the launcher reconciles them)."""
        self.tracker.seed(unfinished)
        for channel in self.channels:
            channel.start()

    def observe(self, run: RunPublic) -> None:
        """Queue a notification when `run` just ended (in one of the configured ways); returns at once."""
        if self.tracker.is_new_end(run) and run.status in self.statuses:
            body = notification_body(run, self.link_base)
            for channel in self.channels:
                channel.put(body)

    def send_test(self) -> NotificationTest:
        """POST a test message to every webhook at once (one try each) and say which took it."""
        body = check_body(self.link_base)
        with ThreadPoolExecutor(max_workers=len(self.channels)) as pool:
            answers = list(pool.map(lambda c: post_json(c.url, body, self.timeout_s), self.channels))
        results = [NotificationDelivery(index=c.index, url=c.shown, ok=error is None, status=status, error=error)
                   for c, (status, error) in zip(self.channels, answers)]
        return NotificationTest(delivered=sum(r.ok for r in results), results=results)

    def close(self) -> None:
        """Give the queued notifications one try each, for at most about one timeout in all."""
        for channel in self.channels:
            channel.stop()
        deadline = time.monotonic() + self.timeout_s + 1
        for channel in self.channels:
            channel.join(deadline - time.monotonic())


def build_notifier(settings: Settings) -> RunEndNotifier | None:
    """The notifier of the configured webhooks; None when there are none."""
    if not settings.notify_urls:
        return None
    if settings.public_url is None and settings.host in WILDCARD_HOSTS:
        log.warning("run links in notifications start %s, this machine's name; set --public-url (or "
                    "CLIPLAB_PUBLIC_URL) to the address people open the dashboard at", settings.link_url)
    return RunEndNotifier(settings.notify_urls, settings.notify_on, settings.link_url, settings.notify_timeout_s)


def send_test_notification(notifier: RunEndNotifier | None) -> NotificationTest:
    """`POST /api/notifications/test`: Conflict (409) naming the settings when no webhook is configured."""
    if notifier is None:
        raise Conflict("no notification webhook is configured; start the server with --notify-url URL "
                       "(repeatable) or CLIPLAB_NOTIFY_URLS='[\"https://...\"]'")
    return notifier.send_test()
