"""Run-end notifications: a real webhook (http.server on 127.0.0.1) hears once when a run ends, from the server in
process (app_server) or `cliplab serve` itself, across a restart too; a slow, failing or absent webhook never
slows the server; the test route says which webhooks take a message."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from pydantic import ValidationError

from backend.settings import Settings

from tests.backend_fixtures import free_port, wait_until

REPO = Path(__file__).resolve().parents[2]
ACCESS_TOKEN = "dashboard-secret-4711"


class Webhook:
    """A webhook receiver on 127.0.0.1 that records each POSTed JSON body and answers `status`; with `hang_s`
    it holds each request that long (or until `release` is set) before answering."""

    def __init__(self, status: int = 200, hang_s: float = 0.0):
        self.status, self.hang_s = status, hang_s
        self.bodies: list[dict[str, Any]] = []
        self.release = threading.Event()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if hook.hang_s:
                    hook.release.wait(hook.hang_s)
                self.send_response(hook.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/secret-path"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        wait_until(lambda: len(self.bodies) >= count, timeout, 0.05, f"{count} POSTs to the webhook")
        return self.bodies

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook_factory() -> Iterator[Any]:
    hooks: list[Webhook] = []

    def make(**kw: Any) -> Webhook:
        hooks.append(Webhook(**kw))
        return hooks[-1]

    yield make
    for hook in hooks:
        hook.close()


def nothing_listening() -> str:
    return f"http://127.0.0.1:{free_port()}/hooks/down"


# ---- an attached run driven through the API (the cheapest real run) -----------------------------------------


def attach(server: Any, name: str, run_id: str | None = None) -> tuple[str, str]:
    config = {"name": name, "data": {"train": "/data/train.csv"}, "train": {"steps": 100}}
    body = {"config": config, "run_dir": f"/scratch/{name.replace(' ', '_')}", "host": "node07"}
    made = server.client.post("/api/runs/attach", json={**body, **({"run_id": run_id} if run_id else {})})
    assert made.status_code == 201, made.text
    return made.json()["run"]["id"], made.json()["token"]


def post_events(server: Any, run_id: str, token: str, events: list[dict[str, Any]]) -> httpx.Response:
    answer = server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                                headers={"Authorization": f"Bearer {token}"})
    assert answer.is_success, answer.text
    return answer


def status(seq: int, value: str, step: int, reason: str | None = None) -> dict[str, Any]:
    return {"seq": seq, "time": time.time(), "kind": "status", "status": value, "reason": reason, "step": step,
            "total_steps": 100}


def start(server: Any, name: str, run_id: str | None = None, seq: int = 0) -> tuple[str, str]:
    """A run attached and training at step 50 with a loss and an eval."""
    run_id, token = attach(server, name, run_id)
    post_events(server, run_id, token, [
        status(seq, "starting", 0), status(seq + 1, "running", 0),
        {"seq": seq + 2, "time": time.time(), "kind": "metric", "step": 50, "values": {"loss": 1.25}},
        {"seq": seq + 3, "time": time.time(), "kind": "eval", "step": 50, "values": {"val/loss": 0.875,
                                                                                       "val/acc": 0.5}}])
    return run_id, token


def end(server: Any, run_id: str, token: str, value: str, seq: int = 4, reason: str | None = None) -> None:
    post_events(server, run_id, token, [status(seq, value, 100 if value == "finished" else 50, reason)])


def run_to_end(server: Any, name: str, value: str, reason: str | None = None) -> tuple[str, str]:
    run_id, token = start(server, name)
    end(server, run_id, token, value, reason=reason)
    return run_id, token


def ends(hook: Webhook) -> list[tuple[str, str]]:
    return [(b["run"]["id"], b["run"]["status"]) for b in hook.bodies]


# ---- tests ------------------------------------------------------------------------------------------------


def test_a_finished_and_a_failed_run_each_post_one_message_with_the_runs_fields_and_no_token(
        webhook_factory, app_server_factory):
    hook = webhook_factory()
    server = app_server_factory(token=ACCESS_TOKEN, notify_urls=[hook.url], public_url="http://dash.example:8000/")
    server.client.headers["Authorization"] = f"Bearer {ACCESS_TOKEN}"
    done_id, done_token = run_to_end(server, "nightly", "finished")
    body = hook.wait_for(1)[0]
    link = f"http://dash.example:8000/#/runs/{done_id}"
    assert body["run"] == {"id": done_id, "name": "nightly", "status": "finished", "reason": None, "step": 100,
                           "total_steps": 100, "best": {"val/loss": 0.875, "val/acc": 0.5},
                           "latest": {"loss": 1.25, "val/loss": 0.875, "val/acc": 0.5}, "link": link, "tags": [],
                           "attached": True, "host": "node07"}
    assert body["content"] == body["text"] and "\n" not in body["text"]
    for part in ("nightly", done_id, "finished", "step 100/100", "best val/loss 0.875", link):
        assert part in body["text"], (part, body["text"])

    # a name and reason a chat would read as mentions or markup arrive inert in the text, exact in `run`
    failed_id, failed_token = run_to_end(server, "@channel <!here> sweep", "failed", "CUDA out of memory\nat step 50")
    body = hook.wait_for(2)[1]
    assert body["run"]["status"] == "failed" and body["run"]["reason"] == "CUDA out of memory\nat step 50"
    assert body["run"]["name"] == "@channel <!here> sweep" and body["run"]["step"] == 50
    assert "failed: CUDA out of memory at step 50" in body["text"] and "step 50/100" in body["text"]
    assert "@channel" not in body["text"] and "<" not in body["text"] and "@\u200bchannel" in body["text"]

    # the same ends published again (a late event, a rename) are not announced again
    post_events(server, done_id, done_token, [{"seq": 9, "time": time.time(), "kind": "log", "level": "info",
                                               "message": "uploading artifacts"}])
    assert server.client.patch(f"/api/runs/{failed_id}", json={"name": "renamed"}).is_success
    time.sleep(1.5)
    assert ends(hook) == [(done_id, "finished"), (failed_id, "failed")]
    raw = json.dumps(hook.bodies)
    assert ACCESS_TOKEN not in raw and done_token not in raw and failed_token not in raw


@pytest.mark.slow  # two server starts
def test_notify_on_picks_the_ends_and_a_restart_announces_no_end_twice_but_a_resumed_runs_new_end(
        webhook_factory, live_server_factory):
    hook = webhook_factory()
    server = live_server_factory(demo=False, notify_urls=json.dumps([hook.url]),
                                 args=["--notify-on", "failed,finished", "--public-url", "http://dash.example:8000"])
    done_id, done_token = run_to_end(server, "done-before-restart", "finished")
    hook.wait_for(1)
    stopped_id, _ = run_to_end(server, "stopped-by-hand", "stopped")  # not in --notify-on
    training_id, training_token = start(server, "training-across-restart")
    server.restart()

    # after the restart: the run that ended before it is touched again, but stays announced once
    assert server.client.patch(f"/api/runs/{done_id}", json={"notes": "looked at it"}).is_success
    post_events(server, done_id, done_token, [{"seq": 9, "time": time.time(), "kind": "log", "level": "info",
                                               "message": "late line"}])
    end(server, training_id, training_token, "finished")  # unfinished at the restart: its end is new
    hook.wait_for(2)
    # a resume by hand opens a new attempt, whose end is a new end
    resumed_id, resumed_token = start(server, "done-before-restart", run_id=done_id, seq=10)
    end(server, resumed_id, resumed_token, "failed", seq=14, reason="diverged")
    hook.wait_for(3)
    time.sleep(1.0)
    assert ends(hook) == [(done_id, "finished"), (training_id, "finished"), (done_id, "failed")]
    assert stopped_id not in json.dumps(hook.bodies)
    assert hook.bodies[2]["run"]["link"] == f"http://dash.example:8000/#/runs/{done_id}"


@pytest.mark.slow  # waits for the lost timeout twice
def test_a_lost_run_is_announced_once_per_attempt_and_its_failure_after_it(webhook_factory, app_server_factory):
    hook = webhook_factory()
    server = app_server_factory(notify_urls=[hook.url], lost_after_s=1.0, poll_s=0.2)
    run_id, token = start(server, "flaky-node")
    lost = hook.wait_for(1)[0]
    assert lost["run"]["status"] == "lost" and "no events from the attached trainer" in lost["run"]["reason"]
    assert "is lost" in lost["text"]
    post_events(server, run_id, token, [{"seq": 4, "time": time.time(), "kind": "heartbeat", "step": 60,
                                         "total_steps": 100}])
    wait_until(lambda: server.client.get(f"/api/runs/{run_id}").json()["status"] == "lost", 15, 0.2, "lost again")
    end(server, run_id, token, "failed", seq=5, reason="NCCL timeout")
    hook.wait_for(2)
    time.sleep(1.0)
    assert ends(hook) == [(run_id, "lost"), (run_id, "failed")]


@pytest.mark.slow  # waits out the retries' backoff twice
def test_failing_webhooks_get_three_tries_are_logged_once_each_and_block_nothing(
        webhook_factory, app_server_factory, caplog):
    caplog.set_level(logging.INFO, logger="cliplab.notify")
    broken, down = webhook_factory(status=500), nothing_listening()
    server = app_server_factory(notify_urls=[broken.url, down])
    run_to_end(server, "first", "failed")
    broken.wait_for(3)  # tried again after 1 s, then 2 s
    run_to_end(server, "second", "failed")
    broken.wait_for(6, timeout=30)
    time.sleep(2.5)
    assert len(broken.bodies) == 6  # gave up after three tries each
    warnings = [r.getMessage() for r in caplog.records if r.name == "cliplab.notify" and r.levelno >= logging.WARNING]
    broken_shown = broken.url.split("/hooks")[0] + "/…"
    assert len([w for w in warnings if broken_shown in w]) == 1, warnings
    assert len([w for w in warnings if down.split("/hooks")[0] + "/…" in w]) == 1, warnings
    assert any("HTTP 500" in w and "after 3 tries" in w for w in warnings), warnings
    assert any("refused" in w.lower() for w in warnings), warnings
    assert not any("secret-path" in w or "Traceback" in w for w in warnings), warnings
    assert server.client.get("/api/runs").json()["total"] == 2  # nothing stored was lost or changed


def test_a_webhook_that_never_answers_slows_neither_ingestion_nor_the_api(webhook_factory, app_server_factory):
    hook = webhook_factory(hang_s=60)
    server = app_server_factory(notify_urls=[hook.url], notify_timeout_s=4)
    run_id, token = start(server, "slow-hook")
    began = time.monotonic()
    end(server, run_id, token, "failed", reason="boom")  # the request that ends the run
    assert time.monotonic() - began < 2.0
    hook.wait_for(1)  # the sender now waits on the webhook
    began = time.monotonic()
    listed = server.client.get("/api/runs")
    assert listed.json()["items"][0]["status"] == "failed" and time.monotonic() - began < 2.0
    hook.release.set()


def test_the_test_route_says_which_webhooks_took_the_message_and_409_without_any(webhook_factory, app_server_factory):
    good, broken, down = webhook_factory(), webhook_factory(status=500), nothing_listening()
    server = app_server_factory(notify_urls=[good.url, broken.url, down], public_url="http://dash.example:8000")
    answer = server.client.post("/api/notifications/test")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["delivered"] == 1
    assert [(r["index"], r["ok"], r["status"]) for r in result["results"]] == [(0, True, 200), (1, False, 500),
                                                                               (2, False, None)]
    assert result["results"][0]["url"] == good.url.split("/hooks")[0] + "/…" and "secret" not in answer.text
    assert "HTTP 500" in result["results"][1]["error"] and "refused" in result["results"][2]["error"].lower()
    assert good.bodies == [{"text": good.bodies[0]["text"], "content": good.bodies[0]["text"], "test": True,
                            "run": None}]
    assert "http://dash.example:8000" in good.bodies[0]["text"]

    unconfigured = app_server_factory()
    refused = unconfigured.client.post("/api/notifications/test")
    assert refused.status_code == 409 and "--notify-url" in refused.json()["detail"]


def test_webhook_settings_name_a_bad_url_or_run_end_and_links_default_to_the_served_address():
    with pytest.raises(ValidationError, match=r"notify_urls[\s\S]*entry 1 \(\?://\?/…\): not an http\(s\) URL"):
        Settings(notify_urls=["https://ok.example/h", "hooks.slack.com/x"])
    with pytest.raises(ValidationError, match=r"notify_on[\s\S]*unknown run end 'crashed'"):
        Settings(notify_on="failed,crashed")
    assert Settings(notify_on="stopped, lost").notify_on == ["stopped", "lost"]
    assert Settings(host="0.0.0.0", port=8123).link_url == f"http://{socket.getfqdn()}:8123"
    assert Settings(host="10.1.2.3", port=8123).link_url == "http://10.1.2.3:8123"
    assert Settings(host="0.0.0.0", public_url="https://dash.lab/").link_url == "https://dash.lab"
    refused = subprocess.run([sys.executable, "-m", "backend.serve", "--notify-url", "ftp://x"], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--notify-url: 'ftp://x' is not an http(s) URL" in refused.stderr
