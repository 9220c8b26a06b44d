"""Attach a run started anywhere to a running dashboard: `cliplab train ... --server URL`.

Torch-free. Rank 0 registers the run (`POST /api/runs/attach`, with the server's access token from
CLIPLAB_TOKEN when the server has one), gets a run id and a per-run ingest token, and then streams its
events exactly like a launched run (trainer.events.HttpPusher). The server cannot signal a process it did
not start, so the pusher also polls `GET /api/runs/<id>/control` and turns a stop request into the same
stop a SIGTERM gives (checkpoint, `stopped`). The server's run id and token are kept in
<run_dir>/attach.json, so a resume by hand and `cliplab sync` continue the same server run.

The server is never needed to train: when it cannot be reached, the trainer warns once and goes on, and
events.jsonl keeps everything for a later `cliplab sync`.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from contract.events import STOP_REQUESTED_REASON
from trainer.events import HttpPusher, batch_refused, http_error_detail, warn

ENV_ACCESS_TOKEN = "CLIPLAB_TOKEN"  # the server's access token (the one `cliplab serve` prints)
ATTACH_FILE = "attach.json"  # {"servers": {url: {"server", "run_id", "token", "run_dir"}}}: this dir's runs
STOP_POLL_S = 2.0
TIMEOUT_S = 5.0


class AttachError(Exception):
    """The server answered but refused (wrong address, missing or wrong token, bad request)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnreachable(Exception):
    """No answer from the server (refused connection, unknown host, timeout)."""


def server_url(url: str, flag: str = "--server") -> str:
    """`url` checked and without a trailing slash; AttachError naming `flag` when it is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AttachError(f"{flag} {url!r} is not a dashboard address; expected a URL like http://HOST:8000")
    return url.strip().rstrip("/")


class ServerClient:
    """The few calls an attached trainer and `cliplab sync` make, with errors that name the problem."""

    def __init__(self, server: str, access_token: str | None = None, timeout_s: float = TIMEOUT_S):
        self.server = server_url(server)
        self.access_token = access_token or None
        self.timeout_s = timeout_s

    def _refused(self, exc: urllib.error.HTTPError, method: str, path: str, token: str | None) -> AttachError:
        detail = http_error_detail(exc)
        if exc.code == 401 and token is None:  # the server's access token, not a run token
            advice = (f"the token in {ENV_ACCESS_TOKEN} was refused" if self.access_token
                      else f"set {ENV_ACCESS_TOKEN} to the token `cliplab serve` printed (kept in <data_dir>/token)")
            return AttachError(f"the dashboard at {self.server} requires its access token: {advice}", 401)
        if exc.code == 404 and not detail.startswith("run "):  # ours name the run; anything else is not us
            return AttachError(f"{self.server} has no {method} {path.split('?')[0]} (404): is this the address "
                               "of a cliplab dashboard?", 404)
        return AttachError(f"the dashboard at {self.server} refused {method} {path} ({exc.code}): {detail}",
                           exc.code)

    def _tls_failed(self, reason: ssl.SSLError) -> AttachError:
        """The server answered, but not in TLS (https:// to a plain-HTTP dashboard) or with a certificate this
        host does not trust: an address to correct, not a server that is away for a while."""
        if "WRONG_VERSION_NUMBER" in str(reason) or "record layer" in str(reason):
            plain = "http://" + self.server.removeprefix("https://")
            return AttachError(f"{self.server} does not speak https (it answered in plain HTTP): use {plain}")
        return AttachError(f"the https connection to {self.server} failed ({reason}): check the address and "
                           "the server's certificate")

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> dict[str, Any]:
        """JSON in, JSON out. Raises ServerUnreachable (no answer) or AttachError (a refusal, or not a cliplab
        server). `token` is a run token; without one the server's access token is sent."""
        headers = {"Accept": "application/json"}
        bearer = token or self.access_token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc, method, path, token) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError):
                raise self._tls_failed(reason) from None
            raise ServerUnreachable(f"cannot reach the dashboard at {self.server} ({reason})") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise AttachError(f"{self.server} answered {method} {path} with something other than a JSON object: "
                              "is this the address of a cliplab dashboard?")
        return answer

    def check(self) -> None:
        """Fail fast on a wrong address or token, before any training (a run list read needs the token)."""
        self.request("GET", "/api/runs?limit=1")

    def register(self, config: dict[str, Any], run_dir: Path, nproc: int = 1, gpus: int = 0,
                 run_id: str | None = None, live: bool = True, run_token: str | None = None) -> tuple[str, str]:
        """(run id, ingest token) of a new attached run, or of `run_id` continued. `run_token`, the token
        attach.json kept, shows the server that a directory which moved is still the run's."""
        body = {"config": config, "run_dir": str(Path(run_dir).resolve()), "host": socket.gethostname()[:255],
                "nproc": nproc, "gpus": gpus, "run_id": run_id, "live": live}
        if run_token:
            body["run_token"] = run_token
        answer = self.request("POST", "/api/runs/attach", body)
        try:
            return answer["run"]["id"], answer["token"]
        except (KeyError, TypeError):
            raise AttachError(f"{self.server} answered POST /api/runs/attach without a run id and token: "
                              "is it a cliplab dashboard of this version?") from None

    def run_page(self, run_id: str) -> str:
        return f"{self.server}/#/runs/{run_id}"


# ---- <run_dir>/attach.json -------------------------------------------------------------------------------


def read_attachment(run_dir: Path, server: str) -> dict[str, str] | None:
    """The run id and token this run dir has on `server`, if it was attached to that server before."""
    return _attachments(Path(run_dir)).get(server)


def write_attachment(run_dir: Path, server: str, run_id: str, token: str) -> None:
    """Keep the run's id and token on `server` beside those it has on other servers (a run synced to a second
    dashboard keeps its link to the first). Kept owner-only: a token lets its holder write the run's events."""
    path = Path(run_dir) / ATTACH_FILE
    servers = _attachments(Path(run_dir))
    servers[server] = {"server": server, "run_id": run_id, "token": token, "run_dir": str(Path(run_dir).resolve())}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"servers": servers}, f, indent=1)
    os.replace(path.with_suffix(".tmp"), path)


def _attachments(run_dir: Path) -> dict[str, dict[str, str]]:
    """server URL -> {"server", "run_id", "token", "run_dir"} from attach.json: {"servers": {...}}, or the one
    entry {"server", "run_id", "token"} that cliplab wrote before a run could know several servers. Entries a
    copy of the directory brought along are left out (see `_copied`)."""
    try:
        saved = json.loads((run_dir / ATTACH_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}
    entries = saved["servers"].values() if isinstance(saved.get("servers"), dict) else [saved]
    return {e["server"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("server"), str)
            and isinstance(e.get("run_id"), str) and not _copied(e, run_dir)}


def _copied(entry: dict[str, str], run_dir: Path) -> bool:
    """An entry written for another directory that still exists: this one is a copy of it (`cp -r` to fork a
    run), and continuing that server run would take it over from the original (new token, new run dir). A
    directory that was moved, or copied to another host, has no original left here and keeps its runs."""
    recorded = entry.get("run_dir")
    if not isinstance(recorded, str) or Path(recorded) == run_dir.resolve():
        return False
    return (Path(recorded) / ATTACH_FILE).is_file()


# ---- the trainer's side ----------------------------------------------------------------------------------


class AttachedPusher(HttpPusher):
    """HttpPusher of an attached run: also polls the run's control endpoint and calls `on_stop(reason)` when
    the dashboard asks the run to stop; warns once when the server stops answering."""

    def __init__(self, server: str, run_id: str, token: str, on_stop: Callable[[str], None], run_dir: Path,
                 poll_s: float = STOP_POLL_S):
        super().__init__(server, run_id, token)
        self.control_url = f"{server}/api/runs/{run_id}/control"
        self.server, self.run_dir, self.on_stop, self.poll_s = server, run_dir, on_stop, poll_s
        self.queued = 0
        self._closing = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="cliplab-stop-poll", daemon=True)
        self._poller.start()

    def put(self, event: dict[str, Any]) -> None:
        self.queued += 1
        super().put(event)

    def _post(self, batch: list[dict]) -> None:
        try:
            super()._post(batch)
        except Exception as exc:
            if not batch_refused(exc):  # a refusal is an answer, which the pusher reports with its reason
                self._warn_away(exc)
            raise

    def _warn_away(self, exc: Exception) -> None:
        if "away" not in self._warned:
            self._warned.add("away")
            warn(f"the dashboard at {self.server} stopped answering ({exc}); training goes on and "
                 f"{self.run_dir / 'events.jsonl'} keeps every event")

    def _poll_loop(self) -> None:
        req = urllib.request.Request(self.control_url, headers={"Authorization": f"Bearer {self.token}"})
        while not self._closing.wait(self.poll_s):
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    state = json.loads(resp.read())
            except (urllib.error.URLError, OSError, TimeoutError, ValueError):
                continue  # the push side warns about an unreachable server; the run goes on
            if isinstance(state, dict) and state.get("stop_requested"):
                self.on_stop(STOP_REQUESTED_REASON)
                return

    def close(self, timeout_s: float = 10.0) -> None:
        self._closing.set()
        super().close(timeout_s)
        missed = self.queued - self.sent
        if missed > 0:
            warn(f"{missed} event(s) did not reach {self.server}; upload them with: "
                 f"cliplab sync {self.run_dir} --server {self.server}")


class Attachment:
    """Rank 0's link to the dashboard of a `--server` run. `connect` (called by the EventWriter once the run
    is built) registers the run and returns its pusher, or None when the server cannot be reached."""

    def __init__(self, client: ServerClient, run_dir: Path, config: dict[str, Any], nproc: int, gpus: int = 0):
        self.client, self.run_dir, self.config, self.nproc, self.gpus = client, Path(run_dir), config, nproc, gpus
        self.on_stop: Callable[[str], None] = lambda reason: None
        self.unreachable_warned = False

    def _later(self, problem: str) -> None:
        if not self.unreachable_warned:
            self.unreachable_warned = True
            warn(f"{problem}; training goes on without the dashboard, and {self.run_dir / 'events.jsonl'} keeps "
                 f"every event: upload them later with: cliplab sync {self.run_dir} --server {self.client.server}")

    def check(self) -> None:
        """Before building the run: AttachError (exit 2) on a refusal; an unreachable server only warns."""
        try:
            self.client.check()
        except ServerUnreachable as exc:
            self._later(str(exc))

    def _register(self) -> tuple[str, str]:
        saved = read_attachment(self.run_dir, self.client.server)
        if saved is not None:
            try:  # a resume by hand: continue the same server run
                return self.client.register(self.config, self.run_dir, self.nproc, self.gpus, run_id=saved["run_id"],
                                            run_token=saved.get("token"))
            except AttachError as exc:
                if exc.status != 404:
                    raise
                warn(f"run {saved['run_id']} is gone from {self.client.server}; registering this run anew")
        return self.client.register(self.config, self.run_dir, self.nproc, self.gpus)

    def connect(self) -> HttpPusher | None:
        try:
            run_id, token = self._register()
        except ServerUnreachable as exc:
            self._later(str(exc))
            return None
        except AttachError as exc:
            self._later(str(exc))
            return None
        write_attachment(self.run_dir, self.client.server, run_id, token)
        print(f"cliplab train: attached to the dashboard as run {run_id}: {self.client.run_page(run_id)}",
              flush=True)
        return AttachedPusher(self.client.server, run_id, token, self.on_stop, self.run_dir)
