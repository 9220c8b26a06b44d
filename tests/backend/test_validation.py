"""API input validation: config bounds, bodies that are not JSON, names, override keys, resume preconditions.

The app in-process on a real port and SQLite file (runs stay queued: no trainer processes here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from backend.models import Run


def _create(server: Any, **body: Any) -> dict[str, Any]:
    r = server.client.post("/api/runs", json={"config": {"train": {"steps": 10}}, **body})
    assert r.status_code == 201, r.text
    return r.json()


def _fields(r: Any) -> list[str]:
    return [e["field"] for e in r.json()["detail"]]


def _end(server: Any, run_id: str, status: str, checkpoint: bool) -> None:
    """Put a run in a terminal state, as the launcher leaves it after its trainer exited."""
    def job(session: Any) -> None:
        run = session.get(Run, run_id)
        run.status, run.step = status, 10
        session.add(run)

    server.services.writer.call(job)
    if checkpoint:
        run_dir = Path(server.client.get(f"/api/runs/{run_id}").json()["run_dir"])
        (run_dir / "checkpoints" / "step_000010").mkdir(parents=True)
        (run_dir / "checkpoints" / "latest").write_text("step_000010\n")


@pytest.mark.parametrize("section, key, value", [
    ("train", "steps", 10**19), ("train", "batch_size", 10**19), ("train", "accum_steps", 10**19),
    ("train", "log_every", 10**19), ("train", "seed", 2**63), ("train", "seed", -(2**63) - 1),
    ("eval", "every", 10**19), ("eval", "batch_size", 10**19), ("eval", "max_samples", 10**19),
    ("checkpoint", "every", 10**19), ("checkpoint", "keep_last", 10**19), ("optim", "warmup_steps", 10**19),
    ("data", "num_workers", 10**19),
])
def test_config_integers_past_their_bounds_are_422_naming_the_field(app_server, section, key, value):
    r = app_server.client.post("/api/runs", json={"config": {section: {key: value}}})
    assert r.status_code == 422, r.text
    assert _fields(r) == [f"{section}.{key}"]
    checked = app_server.client.post("/api/configs/validate", json={"config": {section: {key: value}}}).json()
    assert checked["valid"] is False and checked["errors"][0]["field"] == f"{section}.{key}"
    assert app_server.client.get("/api/runs").json()["total"] == 0


def test_a_body_that_is_not_json_is_named_as_the_body_with_its_line_and_column(app_server):
    post = lambda content, ctype: app_server.client.post(  # noqa: E731
        "/api/runs", content=content, headers={"Content-Type": ctype} if ctype else {})
    broken = post(b'{\n  "name": "x",\n  "config": {oops}\n}', "application/json")
    assert broken.status_code == 422
    assert broken.json()["detail"] == [{"field": "(body)", "message": "the body is not valid JSON (line 3 column "
                                        "14): Expecting property name enclosed in double quotes"}]
    for ctype, named in (("application/yaml", "Content-Type application/yaml"), (None, "no Content-Type")):
        yaml_body = post(b"name: x\nconfig: {}\n", ctype)
        assert yaml_body.status_code == 422
        [error] = yaml_body.json()["detail"]
        assert error["field"] == "(body)" and "takes JSON" in error["message"] and named in error["message"]
    listed = post(b"[1, 2]", "application/json")
    assert listed.json()["detail"] == [{"field": "(body)", "message": "the body must be a JSON object, not list"}]
    assert app_server.client.get("/api/runs").json()["total"] == 0


def test_the_413_on_a_run_body_speaks_of_the_run_not_of_event_batches(app_server_factory):
    server = app_server_factory(max_body_bytes=4096)
    r = server.client.post("/api/runs", json={"config": {}, "name": "x" * 5000})
    assert r.status_code == 413
    assert "4096" in r.json()["detail"] and "config" in r.json()["detail"] and "batches" not in r.json()["detail"]
    events = server.client.post("/api/runs/r-any/events", json={"events": [{"pad": "x" * 5000}]})
    assert events.status_code == 413 and "send smaller batches" in events.json()["detail"]


def test_an_empty_or_blank_name_is_422_on_name_for_create_and_clone(app_server):
    run = _create(app_server, name="base")
    for name in ("", "   ", "\t"):
        created = app_server.client.post("/api/runs", json={"config": {}, "name": name})
        assert created.status_code == 422 and _fields(created) == ["name"], (name, created.text)
        cloned = app_server.client.post(f"/api/runs/{run['id']}/clone", json={"name": name})
        assert cloned.status_code == 422 and _fields(cloned) == ["name"], (name, cloned.text)
    from_config = app_server.client.post("/api/runs", json={"config": {"name": "  "}})
    assert from_config.status_code == 422 and _fields(from_config) == ["name"]
    assert app_server.client.get("/api/runs").json()["total"] == 1


def test_a_bad_override_is_reported_under_the_dotted_key_that_was_sent(app_server):
    run = _create(app_server)
    unknown = app_server.client.post(f"/api/runs/{run['id']}/clone", json={"overrides": {"nope.key": 1}})
    assert unknown.status_code == 422 and _fields(unknown) == ["nope.key"]
    not_a_section = app_server.client.post(f"/api/runs/{run['id']}/clone", json={"overrides": {"name.first": 1}})
    assert not_a_section.status_code == 422 and _fields(not_a_section) == ["name.first"]
    _end(app_server, run["id"], "stopped", checkpoint=True)
    resumed = app_server.client.post(f"/api/runs/{run['id']}/resume",
                                     json={"overrides": {"nope.key": 1, "train.steps": 10**19}})
    assert resumed.status_code == 422 and sorted(_fields(resumed)) == ["nope.key", "train.steps"]


def test_resuming_a_finished_run_is_409_unless_it_asks_for_more_steps(app_server):
    run = _create(app_server)
    _end(app_server, run["id"], "finished", checkpoint=True)
    for body in (None, {"overrides": {}}, {"overrides": {"train.steps": 10}}, {"overrides": {"train.steps": 5}}):
        r = app_server.client.post(f"/api/runs/{run['id']}/resume", json=body)
        assert r.status_code == 409, (body, r.text)
        assert r.json()["detail"] == (f'run {run["id"]!r} already finished its 10 steps; resume with overrides '
                                      '{"train.steps": M} where M > 10')
    more = app_server.client.post(f"/api/runs/{run['id']}/resume", json={"overrides": {"train.steps": 20}})
    assert more.status_code == 200, more.text
    assert more.json()["status"] == "queued" and more.json()["config"]["train"]["steps"] == 20


def test_can_resume_is_true_only_for_an_ended_run_with_a_checkpoint(app_server):
    queued = _create(app_server, name="queued")
    failed_bare = _create(app_server, name="failed without checkpoint")
    failed_saved = _create(app_server, name="failed with checkpoint")
    _end(app_server, failed_bare["id"], "failed", checkpoint=False)
    _end(app_server, failed_saved["id"], "failed", checkpoint=True)
    assert queued["can_resume"] is False
    listed = {r["name"]: r["can_resume"] for r in app_server.client.get("/api/runs").json()["items"]}
    assert listed == {"queued": False, "failed without checkpoint": False, "failed with checkpoint": True}
    assert app_server.client.get(f"/api/runs/{failed_saved['id']}").json()["can_resume"] is True
    refused = app_server.client.post(f"/api/runs/{failed_bare['id']}/resume")
    assert refused.status_code == 409 and "no checkpoint" in refused.json()["detail"]


def test_data_sources_a_launched_run_could_not_read_are_422_on_their_field(app_server_factory, tmp_path):
    app_server = app_server_factory(readable_dirs=[tmp_path, Path("/shards")])  # folders the admin lets runs read
    data_dir = Path(app_server.services.settings.data_dir)
    pets = data_dir / "datasets" / "pets"
    pets.mkdir(parents=True)
    (pets / "train.csv").write_text("filepath,caption\n")  # no val split
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_text("filepath,caption\n")

    def errors(train: str, val: str | None) -> dict[str, str]:
        r = app_server.client.post("/api/runs", json={"config": {"data": {"train": train, "val": val}}})
        if r.status_code == 201:
            return {}
        assert r.status_code == 422, r.text
        return {e["field"]: e["message"] for e in r.json()["detail"]}

    assert errors("demo", "demo") == {} and errors("pets", None) == {} and errors(str(csv_path), "demo") == {}
    assert errors("/shards/pairs-{000000..000009}.tar", None) == {}  # patterns are the trainer's to check
    unknown = errors("petz", "pets")
    assert "no prepared dataset named 'petz' (available: demo, pets)" in unknown["data.train"]
    assert "dataset 'pets' has no val split" in unknown["data.val"]
    assert "relative path" in errors("pairs.csv", None)["data.train"]
    assert errors(str(tmp_path / "gone.csv"), None) == {"data.train": f"file not found: {tmp_path / 'gone.csv'}"}
    checked = app_server.client.post("/api/configs/validate", json={"config": {"data": {"train": "petz"}}}).json()
    assert not checked["valid"] and checked["errors"][0]["field"] == "data.train"


def test_the_form_check_with_launch_fields_refuses_what_creating_the_run_refuses(app_server):
    config = {"data": {"num_workers": 100}}
    assert app_server.client.post("/api/configs/validate", json={"config": config}).json()["valid"]  # config alone
    checked = app_server.client.post("/api/configs/validate", json={"config": config, "gpus": 0, "nproc": 1}).json()
    assert not checked["valid"] and [e["field"] for e in checked["errors"]] == ["data.num_workers"]
    created = app_server.client.post("/api/runs", json={"config": config, "gpus": 0, "nproc": 1})
    assert created.status_code == 422 and created.json()["detail"][0]["field"] == "data.num_workers"
    cores = len(os.sched_getaffinity(0))
    too_many = app_server.client.post("/api/configs/validate", json={"config": {}, "gpus": 0, "nproc": cores + 1}).json()
    assert [e["field"] for e in too_many["errors"]] == ["nproc"]
    unknown = app_server.client.post("/api/configs/validate", json={"config": {}, "gpus": 0, "executor": "k8s"}).json()
    assert [e["field"] for e in unknown["errors"]] == ["executor"]
