"""HEAD answers as GET does, without a body (RFC 9110 9.3.2): uptime monitors and `curl -I` probe with it."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.backend.test_api import _fake_checkpoint


def _raw(port: int, requests: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    """Send `requests` (method and path) on one keep-alive connection; each answer's status, headers, body.
    A HEAD answer that failed to end (an event stream still running) would hold up the request after it."""
    answers = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        reader = sock.makefile("rb")
        for request in requests:
            method, path = request.split(" ", 1)
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            status = int(reader.readline().split()[1])
            headers = {}
            while (line := reader.readline().decode()) != "\r\n":
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            size = 0 if method == "HEAD" else int(headers.get("content-length", 0))
            answers.append((status, headers, reader.read(size)))
    return answers


def test_head_answers_with_the_status_and_headers_of_get_and_no_body(app_server):
    run_id = app_server.client.post("/api/runs", json={"config": {"train": {"steps": 10}}}).json()["id"]
    port = app_server.settings.port
    for path, status in (("/api/health", 200), (f"/api/runs/{run_id}", 200), (f"/api/runs/{run_id}/series", 200),
                         ("/api/configs", 200), ("/api/runs/no-such-run", 404), ("/api/no-such-route", 404)):
        # GET on both sides: a queued run's row may change (the launcher's first tick) around the HEAD
        (_, before, _), (head_status, head, body), (get_status, get, _) = _raw(
            port, [f"GET {path}", f"HEAD {path}", f"GET {path}"])
        assert (head_status, get_status) == (status, status), path
        assert body == b"" and head["content-type"] == get["content-type"], path
        assert head["content-length"] in (before["content-length"], get["content-length"]), path


def test_head_on_an_event_stream_ends_at_once_and_the_connection_serves_on(app_server):
    run_id = app_server.client.post("/api/runs", json={"config": {"train": {"steps": 10}}}).json()["id"]
    answers = _raw(app_server.settings.port, ["HEAD /api/stream", f"HEAD /api/runs/{run_id}/stream",
                                              "GET /api/health"])
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[0][1]["content-type"].startswith("text/event-stream")
    assert answers[2][2].startswith(b"{")


def test_head_of_a_checkpoint_download_sends_its_headers_only(app_server):
    run = app_server.client.post("/api/runs", json={"config": {"train": {"steps": 10}}}).json()
    _fake_checkpoint(Path(run["run_dir"]))
    base = f"/api/runs/{run['id']}/checkpoints/step_000004/download"
    (one, one_head, _), (folder, folder_head, _), (after, _, _) = _raw(
        app_server.settings.port, [f"HEAD {base}?file=model.safetensors", f"HEAD {base}", "GET /api/health"])
    assert (one, folder, after) == (200, 200, 200)
    assert one_head["content-length"] == "700"
    assert folder_head["content-type"] == "application/x-tar" and "step_000004" in folder_head["content-disposition"]


def test_head_is_not_an_operation_of_the_openapi_schema_and_post_routes_do_not_take_it(app_server):
    paths = app_server.client.get("/openapi.json").json()["paths"]
    assert not [p for p, ops in paths.items() if "head" in ops]
    assert app_server.client.head("/api/runs/attach").status_code in (404, 405)
