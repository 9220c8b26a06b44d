import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import TypeAdapter

from contract.events import (
    EVENT_KINDS,
    EVENT_MODELS,
    MAX_STEP,
    VALUE_RULE,
    Event,
    event_problems,
    read_events,
)
from trainer.events import EventWriter


class _Collector(BaseHTTPRequestHandler):
    fail_first = 0
    received: list = []
    auth: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        cls.auth.append(self.headers.get("Authorization"))
        cls.received.extend(json.loads(body)["events"])
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def collector():
    handler = type("Handler", (_Collector,), {"received": [], "auth": [], "fail_first": 2})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()


def test_events_go_to_file_with_increasing_seq_and_continue_after_reopen(tmp_path):
    with EventWriter(tmp_path) as w:
        w.status("starting")
        w.emit("metric", step=1, values={"loss": 1.5, "bad": float("nan")})
    with EventWriter(tmp_path) as w:
        w.emit("heartbeat", step=2, total_steps=10)
    events = list(read_events(tmp_path / "events.jsonl"))
    assert [e["seq"] for e in events] == [0, 1, 2]
    assert events[1]["values"] == {"loss": 1.5, "bad": None}
    assert all(isinstance(e["time"], float) for e in events)


def test_torn_last_line_is_skipped_and_numbering_continues(tmp_path):
    with EventWriter(tmp_path) as w:
        w.log("hello")
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"seq": 1, "kind": "lo')
    with EventWriter(tmp_path) as w:
        event = w.log("again")
    assert event["seq"] == 1
    assert [e["message"] for e in read_events(tmp_path / "events.jsonl")] == ["hello", "again"]


def test_disabled_writer_writes_nothing(tmp_path):
    w = EventWriter(tmp_path / "r1", enabled=False)
    assert w.emit("log", level="info", message="x") is None
    w.close()
    assert not (tmp_path / "r1").exists()


def test_unknown_kind_and_status_are_rejected(tmp_path):
    with EventWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="unknown event kind"):
            w.emit("metrics")
        with pytest.raises(ValueError, match="unknown status"):
            w.status("done")


def test_http_push_retries_and_delivers_every_event_once(tmp_path, collector):
    server, handler = collector
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with EventWriter(tmp_path, server=url, token="tok", run_id="r42") as w:
        for step in range(25):
            w.emit("metric", step=step, values={"loss": 1.0 / (step + 1)})
    assert [e["seq"] for e in handler.received] == list(range(25))
    assert set(handler.auth) == {"Bearer tok"}
    assert w.pusher.failures >= 2  # the two 503s were retried, not dropped


@pytest.mark.slow  # waits out the push retry backoff
def test_push_gives_up_on_shutdown_when_server_is_gone(tmp_path):
    # Port 9 on loopback: nothing listens; closing must not hang the trainer.
    w = EventWriter(tmp_path, server="http://127.0.0.1:9", token="t", run_id="r")
    w.emit("log", level="info", message="x")
    w.close()
    assert len(list(read_events(tmp_path / "events.jsonl"))) == 1


def test_held_events_touch_no_file_until_released_and_vanish_when_discarded(tmp_path):
    run = tmp_path / "run"
    kept = EventWriter(run, hold=True)
    kept.status("starting")
    kept.log("building")
    assert not run.exists()
    kept.release()
    kept.log("built")
    kept.close()
    assert [(e["seq"], e["kind"]) for e in read_events(run / "events.jsonl")] == [(0, "status"), (1, "log"), (2, "log")]

    dropped = EventWriter(run, hold=True)
    dropped.status("starting")
    dropped.discard()
    dropped.status("failed", reason="ignored once discarded")
    dropped.close()
    assert [e["seq"] for e in read_events(run / "events.jsonl")] == [0, 1, 2]  # the run's file is as it was


def test_each_kind_is_one_model_picked_by_kind_and_extra_fields_are_kept():
    adapter = TypeAdapter(Event)
    assert EVENT_KINDS == tuple(EVENT_MODELS)
    for kind, model in EVENT_MODELS.items():
        event = {"seq": 3, "time": 1.5, "kind": kind, "step": 2, "values": {"loss": 1.0}, "status": "running",
                 "path": "checkpoints/step_2", "from_a_newer_trainer": [1]}
        parsed = adapter.validate_python(event)
        assert type(parsed) is model and parsed.model_extra["from_a_newer_trainer"] == [1]


def test_problems_name_each_bad_field_with_the_rule_it_breaks():
    assert event_problems({"seq": 0, "time": 1, "kind": "heartbeat"}) == []  # an int time is a number
    assert event_problems({"seq": True, "time": 1.0, "kind": "gossip"}) == [
        ("seq", "must be an integer in 0..9223372036854775807"), ("kind", f"must be one of {', '.join(EVENT_KINDS)}")]
    problems = dict(event_problems({"seq": 0, "time": float("inf"), "kind": "system",
                                    "values": {"": 1.0, "sys/rss_gib": "2", "ok": None}, "total_steps": -1}))
    assert problems == {"time": "must be a finite number (unix seconds)",
                        "step": "required for metric, eval and system events",
                        "total_steps": f"must be an integer in 0..{MAX_STEP} or null",
                        "values.": VALUE_RULE, "values.sys/rss_gib": VALUE_RULE}
    assert VALUE_RULE == "must be a number or null under a name of 1-200 chars without NUL characters"
    assert dict(event_problems({"seq": 0, "time": 0.0, "kind": "checkpoint", "step": None, "path": ""})) == {
        "step": f"must be an integer in 0..{MAX_STEP}",
        "path": "must be the checkpoint path relative to the run dir, without NUL characters"}


def test_writer_refuses_an_event_the_server_would_refuse_and_spends_no_seq_on_it(tmp_path):
    with EventWriter(tmp_path) as w:
        with pytest.raises(ValueError, match="checkpoint event 0 breaks the event contract: path must be"):
            w.emit("checkpoint", step=1, path="")
        with pytest.raises(ValueError, match="step required for metric"):
            w.emit("metric", values={"loss": 1.0})
        assert w.emit("checkpoint", step=1, path="checkpoints/step_1")["seq"] == 0
    assert [e["kind"] for e in read_events(tmp_path / "events.jsonl")] == ["checkpoint"]


def test_writer_makes_text_and_numbers_json_safe_and_keeps_well_formed_text(tmp_path):
    with EventWriter(tmp_path) as w:
        w.log("caf\udce9 \U0001f600")  # an undecodable file-name byte, then an emoji
        w.emit("matrix", step=1, captions=["a \\ud800 b"], similarity=[[1.0, float("-inf")]])
    log, matrix = read_events(tmp_path / "events.jsonl")
    assert log["message"] == "caf\ufffd \U0001f600"
    assert matrix["captions"] == ["a \\ud800 b"] and matrix["similarity"] == [[1.0, None]]


def test_reading_events_passes_over_a_line_with_bytes_that_are_not_utf8(tmp_path):
    """A damaged line must not stop a resume's seq count or a sync there: the lines after it are read."""
    from contract.events import last_seq, read_events

    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq": 0, "time": 1.0, "kind": "log", "message": "a"}\n'
                     b'{"seq": 1, "time": 2.0, "kind": "log", "message": "\xff\xfe"}\n'
                     b'{"seq": 2, "time": 3.0, "kind": "log", "message": "b"}\n{"seq": 3, "ti')
    assert [e["seq"] for e in read_events(path)] == [0, 2]
    assert last_seq(path) == 2


def test_non_finite_numbers_another_writer_left_read_as_null_and_the_events_stay_valid(tmp_path):
    """Python's json (and so a hand-written logger) writes NaN and Infinity, and 1e999 parses as inf; cliplab's
    writer sends null there. Reading them as null keeps the line, so a sync or a server backfill takes it."""
    path = tmp_path / "events.jsonl"
    events = [{"seq": 0, "time": 1.0, "kind": "metric", "step": 1, "values": {"loss": float("nan"), "lr": 1e-3}},
              {"seq": 1, "time": 2.0, "kind": "metric", "step": 2, "values": {"loss": float("inf"), "g": -float("inf")}},
              {"seq": 2, "time": 3.0, "kind": "matrix", "step": 2, "captions": ["a", "b"], "thumbnails": [],
               "similarity": [[float("nan"), 0.5], [0.25, 1.0]], "logit_scale": float("nan")}]
    path.write_text("\n".join(json.dumps(e) for e in events) + '\n{"seq": 3, "time": 4.0, "kind": "metric", '
                    '"step": 3, "values": {"loss": 1e999, "acc": 0.5}}\n')
    read = list(read_events(path))
    assert [e["seq"] for e in read] == [0, 1, 2, 3]
    assert read[0]["values"] == {"loss": None, "lr": 1e-3} and read[1]["values"] == {"loss": None, "g": None}
    assert read[2]["similarity"] == [[None, 0.5], [0.25, 1.0]] and read[2]["logit_scale"] is None
    assert read[3]["values"] == {"loss": None, "acc": 0.5}
    assert all(not event_problems(e) for e in read), [event_problems(e) for e in read]
    json.dumps(read, allow_nan=False)  # what an HTTP client sends: strict JSON
