"""The trainer's HTTP push (trainer.events.HttpPusher) against a real server: what it tells the user when the
server refuses a batch or leaves some of its metric names uncharted. Each is told once, however often it recurs."""

from __future__ import annotations

from trainer.attach import AttachedPusher
from trainer.events import HttpPusher

from tests.backend.test_ingest import _metric, _running_with_token
from tests.backend_fixtures import wait_until


def _push(server, run_id: str, token: str, events: list[dict]) -> HttpPusher:
    pusher = HttpPusher(server.base_url, run_id, token, batch_size=1, flush_s=0.05)
    for ev in events:
        pusher.put(ev)
    pusher.close()
    return pusher


def test_the_pusher_warns_once_when_metric_names_pass_the_runs_series_limit(app_server_factory, capfd):
    server = app_server_factory(max_series_per_run=2)
    run_id, token = _running_with_token(server)
    pusher = _push(server, run_id, token, [_metric(0, 0, loss=1.0, lr=0.1)] +
                   [_metric(i, i, loss=1.0 / i, **{f"loss_{i}": 1.0}) for i in range(1, 6)])
    assert pusher.sent == 6 and pusher.failures == 0  # stored: the events keep the uncharted values
    err = capfd.readouterr().err
    assert err.count("cliplab: warning:") == 1, err
    assert "'loss_1'" in err and "not charted" in err
    names = server.client.get(f"/api/runs/{run_id}/metrics").json()["names"]
    assert names == ["loss", "lr"]


def test_the_pusher_names_the_servers_reason_when_it_refuses_a_batch(app_server_factory, capfd):
    server = app_server_factory(max_seq_ahead=10)
    run_id, token = _running_with_token(server)
    far = [_metric(100 + i, i, loss=1.0) for i in range(3)]  # seqs no trainer jumps to: refused (409), not retried
    pusher = _push(server, run_id, token, [_metric(0, 0, loss=1.0)] + far)
    assert pusher.sent == 1 and pusher.failures == 3
    err = capfd.readouterr().err
    assert err.count("cliplab: warning:") == 1, err
    assert "HTTP 409" in err and "CLIPLAB_MAX_SEQ_AHEAD" in err and "events.jsonl keeps them" in err
    wait_until(lambda: server.client.get(f"/api/runs/{run_id}").json()["last_seq"] == 0, 5)


def test_an_attached_runs_pusher_reports_a_refusal_as_one_not_as_the_server_going_away(app_server_factory, capfd,
                                                                                       tmp_path):
    server = app_server_factory(max_seq_ahead=10)
    run_id, token = _running_with_token(server)
    pusher = AttachedPusher(server.base_url, run_id, token, on_stop=lambda reason: None, run_dir=tmp_path)
    pusher.batch_size, pusher.flush_s = 1, 0.05
    for ev in [_metric(0, 0, loss=1.0), _metric(100, 1, loss=1.0)]:
        pusher.put(ev)
    pusher.close()
    err = capfd.readouterr().err
    assert "HTTP 409" in err and "stopped answering" not in err, err
    assert pusher.sent == 1
