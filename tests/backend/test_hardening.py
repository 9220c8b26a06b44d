"""Hardening against a hostile or careless client, through the real server (`cliplab serve` on 127.0.0.1):
the error contract in /openapi.json, bad text, headers, symlinks, malformed datasets, limits, a full disk."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import jsonschema
import pytest

from tests.backend_fixtures import REPO, LiveServer, running_run_in_live_server

RUN_TOKEN = "hardening-run-token"


def _schema_of(openapi: dict[str, Any], path: str, method: str, code: int) -> dict[str, Any]:
    """The JSON schema /openapi.json declares for one answer, with its $refs resolvable."""
    content = openapi["paths"][path][method]["responses"][str(code)]["content"]["application/json"]["schema"]
    return {**content, "components": openapi["components"]}


def _conforms(openapi: dict[str, Any], path: str, method: str, code: int, body: Any) -> None:
    jsonschema.validate(body, _schema_of(openapi, path, method, code))


# ---- 10: the OpenAPI document tells the truth ----------------------------------------------------------


@pytest.mark.slow  # a `cliplab serve` process
def test_openapi_declares_one_error_model_for_every_status_each_route_answers(live_server):
    openapi = live_server.get("/openapi.json").json()
    assert "HTTPValidationError" not in openapi["components"]["schemas"]
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            for code, answer in operation["responses"].items():
                if int(code) >= 400:
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref == "#/components/schemas/ApiError", (method, path, code)
    runs, run, stop = (openapi["paths"][p] for p in ("/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/stop"))
    assert {"401", "403", "413", "422", "507"} <= set(runs["post"]["responses"])
    assert "404" in run["get"]["responses"] and "404" not in runs["get"]["responses"]
    assert {"404", "409"} <= set(stop["post"]["responses"])


@pytest.mark.slow  # a `cliplab serve` process
def test_openapi_documents_the_ingest_body_as_the_event_models_the_trainer_writes(live_server, tmp_path):
    from contract.events import EVENT_KINDS, read_events
    from trainer.events import EventWriter

    openapi = live_server.get("/openapi.json").json()
    body = openapi["paths"]["/api/runs/{run_id}/events"]["post"]["requestBody"]["content"]["application/json"]
    items = openapi["components"]["schemas"]["EventBatch"]["properties"]["events"]["items"]
    assert set(items["discriminator"]["mapping"]) == set(EVENT_KINDS)
    with EventWriter(tmp_path) as w:
        w.status("running", step=0, total_steps=10)
        w.emit("metric", step=1, values={"loss": 2.5, "lr": float("nan")})
        w.emit("checkpoint", step=1, path="checkpoints/step_1", checkpoint_kind="latest")
        w.log("saved")
    batch = {"events": list(read_events(tmp_path / "events.jsonl"))}
    jsonschema.validate(batch, {**body["schema"], "components": openapi["components"]})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"events": [{**batch["events"][1], "step": -1}]},
                            {**body["schema"], "components": openapi["components"]})


@pytest.mark.slow  # a `cliplab serve` process
def test_error_answers_match_their_declared_schema_and_unparseable_bodies_are_422(live_server):
    openapi = live_server.get("/openapi.json").json()
    bad_field = live_server.post("/api/runs", json={"config": {}, "gpus": -1})
    assert bad_field.status_code == 422
    _conforms(openapi, "/api/runs", "post", 422, bad_field.json())
    assert bad_field.json()["detail"][0]["field"] == "gpus"
    for body in (b'{"config": {"name": "caf\xe9"}}', b"[" * 100_000, b'{"config": '):
        r = live_server.post("/api/runs", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, (body[:20], r.text)
        _conforms(openapi, "/api/runs", "post", 422, r.json())
        assert r.json()["detail"][0]["field"] == "(body)"
    not_utf8 = live_server.post("/api/runs", content=b'{"name": "\xff"}', headers={"content-type": "application/json"})
    assert "not UTF-8" in not_utf8.json()["detail"][0]["message"]
    missing = live_server.post("/api/runs/r-nope/stop")
    assert missing.status_code == 404
    _conforms(openapi, "/api/runs/{run_id}/stop", "post", 404, missing.json())
    run_id = live_server.post("/api/runs", json={"config": {}}).json()["id"]
    assert live_server.post(f"/api/runs/{run_id}/stop").status_code == 200
    again = live_server.post(f"/api/runs/{run_id}/stop")
    assert again.status_code == 409
    _conforms(openapi, "/api/runs/{run_id}/stop", "post", 409, again.json())


# ---- 2: lone surrogates --------------------------------------------------------------------------------


def _post_raw(server: Any, path: str, text: str, **headers: str) -> httpx.Response:
    """POST a JSON text as written (json= would refuse to encode a lone surrogate)."""
    return server.post(path, content=text.encode(), headers={"content-type": "application/json", **headers})


@pytest.mark.slow  # a `cliplab serve` process
def test_lone_surrogates_are_refused_at_the_door_naming_the_field(live_server):
    for text, field in ((r'{"tags": ["ok", "\udfff"]}', "tags.1"),
                        (r'{"config": {"data": {"train": "a\ud800b"}}}', "config.data.train"),
                        (r'{"name": "\udc00"}', "name")):
        r = _post_raw(live_server, "/api/runs", text)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == [{"field": field, "message": r.json()["detail"][0]["message"]}]
        assert "surrogate" in r.json()["detail"][0]["message"]
    # a well-formed pair (an emoji written as two escapes) is ordinary text
    ok = _post_raw(live_server, "/api/runs", r'{"name": "run \ud83d\ude00", "config": {}}')
    assert ok.status_code == 201 and ok.json()["name"] == "run \U0001f600"
    run_id = running_run_in_live_server(live_server, RUN_TOKEN)
    event = r'{"events": [{"seq": 0, "time": 1.0, "kind": "log", "level": "info", "message": "x\udfff"}]}'
    r = _post_raw(live_server, f"/api/runs/{run_id}/events", event, authorization=f"Bearer {RUN_TOKEN}")
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "events.0.message"
    assert live_server.get("/api/runs").json()["total"] == 2  # nothing with bad text was stored


def _store_bad_text(server: Any, run_id: str) -> None:
    """What an older server or a hand-edited file left behind: lone surrogates in rows and files."""
    bad = json.dumps("\udfff")  # the JSON escape the database's JSON columns hold
    log = {"seq": 0, "time": 1.0, "kind": "log", "level": "info", "message": "bad \udfff"}
    with sqlite3.connect(server.data_dir / "cliplab.db", timeout=30) as db:
        db.execute(f"UPDATE runs SET tags = '[{bad}]', metric_names = '[{bad}]', config = ? WHERE id = ?",
                   (json.dumps({"name": "cfg \udfff"}), run_id))
        db.execute("INSERT INTO events (run_id, seq, kind, time, step, payload) VALUES (?, 0, 'log', 1.0, NULL, ?)",
                   (run_id, json.dumps(log)))
    run_dir = server.data_dir / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "stdout.log").write_bytes(b"fine\nbad \xff\xfe bytes\n")
    broken = server.data_dir / "datasets" / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text('{"source": "\\udfff", "counts": {"train": 1}}')


@pytest.mark.slow  # a `cliplab serve` process
def test_bad_text_already_stored_is_answered_with_replacement_characters_never_500(live_server):
    run_id = running_run_in_live_server(live_server, RUN_TOKEN)
    _store_bad_text(live_server, run_id)
    listed = live_server.get("/api/runs")
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"][0]["tags"] == ["\ufffd"]
    run = live_server.get(f"/api/runs/{run_id}")
    assert run.status_code == 200 and run.json()["config"]["name"] == "cfg \ufffd"
    logs = live_server.get(f"/api/runs/{run_id}/logs")
    assert logs.status_code == 200, logs.text
    assert logs.json()["lines"][-1].startswith("bad \ufffd")
    assert logs.json()["events"][0]["message"] == "bad \ufffd"
    assert live_server.get(f"/api/runs/{run_id}/events").json()["events"][0]["message"] == "bad \ufffd"
    assert live_server.get(f"/api/runs/{run_id}/metrics").json() == {"names": ["\ufffd"]}
    datasets = live_server.get("/api/datasets")
    assert datasets.status_code == 200, datasets.text
    assert {d["name"]: d["source"] for d in datasets.json()}["broken"] == "\ufffd"
    with live_server.client.stream("GET", f"/api/runs/{run_id}/stream", params={"after": -1}) as stream:
        lines = stream.iter_lines()
        first = [next(lines) for _ in range(3)]  # event: run, data: {...}, retry (or blank)
        assert json.loads(first[1][len("data:"):])["tags"] == ["\ufffd"], first
        log = next(json.loads(line[len("data:"):]) for line in lines if line.startswith("data:"))
    assert log["message"] == "bad \ufffd"


# ---- 4: symlinks and paths out of the run and dataset folders ------------------------------------------


def _secret(tmp_path: Path, name: str = "secret.jpg") -> Path:
    secret = tmp_path / "outside" / name
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("SECRET-FIRST-LINE\n")
    return secret


@pytest.mark.slow  # a `cliplab serve` process
def test_run_files_linked_outside_the_run_dir_are_never_served_or_echoed(live_server, tmp_path):
    secret = _secret(tmp_path, "passwd")
    run_id = live_server.post("/api/runs", json={"config": {}}).json()["id"]
    run_dir = live_server.data_dir / "runs" / run_id
    (run_dir / "checkpoints" / "step_000002").mkdir(parents=True)
    (run_dir / "checkpoints" / "step_000002" / "model.safetensors").write_bytes(b"weights")
    (run_dir / "checkpoints" / "best").symlink_to(secret)
    (run_dir / "checkpoints" / "latest").write_text(str(secret.parent) + "\n")
    (run_dir / "stdout.log").symlink_to(secret)
    answers = [live_server.get(f"/api/runs/{run_id}/checkpoints/{name}/download", params=params)
               for name in ("best", "latest") for params in ({}, {"file": "model.safetensors"})]
    answers += [live_server.get(f"/api/runs/{run_id}/logs"), live_server.get(f"/api/runs/{run_id}/checkpoints")]
    for r in answers:
        assert "SECRET" not in r.text and str(secret.parent) not in r.text, r.text
    assert [r.status_code for r in answers[:4]] == [404] * 4
    assert answers[4].json()["lines"] == ["(stdout.log links outside the run directory; not shown)"]
    ok = live_server.get(f"/api/runs/{run_id}/checkpoints/step_000002/download", params={"file": "model.safetensors"})
    assert ok.status_code == 200 and ok.content == b"weights"


def _leaky_dataset(data_dir: Path, secret: Path) -> Path:
    from PIL import Image

    folder = data_dir / "datasets" / "leaky"
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(folder / "images" / "fine.png")
    (folder / "images" / "link.png").symlink_to(secret)
    (folder / "dataset.json").write_text(json.dumps({"counts": {"val": 4}}))
    up = "../" * (len(folder.parts) + 2)
    (folder / "val.csv").write_text("filepath,caption\n"
                                    f"images/fine.png,fine\n{secret},absolute\nimages/link.png,link\n"
                                    f"{up}{str(secret).lstrip('/')},dotdot\n")
    return folder


@pytest.mark.slow  # several live servers
def test_dataset_previews_serve_only_files_inside_the_dataset_or_readable_folders(live_server_factory, tmp_path):
    secret = _secret(tmp_path)
    server = live_server_factory()
    _leaky_dataset(server.data_dir, secret)
    answers = [server.get(f"/api/datasets/leaky/images/val/{row}") for row in range(4)]
    assert answers[0].status_code == 200 and answers[0].headers["content-type"] == "image/png"
    for r in answers[1:]:
        assert r.status_code == 404 and "SECRET" not in r.text and str(secret) not in r.text, r.text
        assert "CLIPLAB_READABLE_DIRS" in r.json()["detail"]
    # The admin lists the folder: the same rows are served.
    allowed = live_server_factory(readable_dirs=json.dumps([str(secret.parent)]))
    _leaky_dataset(allowed.data_dir, secret)
    assert [allowed.get(f"/api/datasets/leaky/images/val/{row}").status_code for row in range(4)] == [200] * 4


# ---- 8: malformed datasets -------------------------------------------------------------------------------


@pytest.mark.slow  # a `cliplab serve` process
def test_malformed_dataset_csvs_are_422_naming_the_file_and_line(live_server):
    root = live_server.data_dir / "datasets"
    for name, content in (("latin1", "filepath,caption\na.png,fine\nb.png,caf\xe9 au lait\n".encode("latin-1")),
                          ("hugefield", b"filepath,caption\na.png,fine\nb.png,\"" + b"x" * 200_000 + b"\"\n")):
        (root / name).mkdir()
        (root / name / "dataset.json").write_text("{}")
        (root / name / "val.csv").write_bytes(content)
        for path in (f"/api/datasets/{name}/preview", f"/api/datasets/{name}/images/val/1"):
            r = live_server.get(path)
            assert r.status_code == 422, (path, r.status_code, r.text)
            message = r.json()["detail"][0]["message"]
            assert f"val.csv of dataset {name!r}, line 3" in message, message
    assert live_server.get("/api/datasets").status_code == 200


# ---- 6: a far-ahead seq ----------------------------------------------------------------------------------


def _metric(seq: int, step: int, **values: float) -> dict[str, Any]:
    return {"seq": seq, "time": 1000.0 + seq, "kind": "metric", "step": step, "values": values}


@pytest.mark.slow  # a `cliplab serve` process
def test_a_far_ahead_seq_is_409_with_the_accepted_range_and_the_run_keeps_following_its_events(
        live_server_factory):
    server = live_server_factory(max_seq_ahead=1000)
    run_id = running_run_in_live_server(server, RUN_TOKEN)
    auth = {"Authorization": f"Bearer {RUN_TOKEN}"}

    def post(*events: dict[str, Any]) -> httpx.Response:
        return server.post(f"/api/runs/{run_id}/events", json={"events": list(events)}, headers=auth)

    assert post(_metric(0, 1, loss=3.0), _metric(1, 2, loss=2.5)).json() == {"accepted": 2, "duplicates": 0, "uncharted": []}
    far = post(_metric(2, 3, loss=2.0), _metric(2**62, 4, loss=0.0))
    assert far.status_code == 409, far.text
    assert "accepted seqs are 0..1002" in far.json()["detail"] and str(2**62) in far.json()["detail"]
    _conforms(server.get("/openapi.json").json(), "/api/runs/{run_id}/events", "post", 409, far.json())
    assert [e["seq"] for e in server.get(f"/api/runs/{run_id}/events").json()["events"]] == [0, 1]  # none of it
    with server.client.stream("GET", f"/api/runs/{run_id}/stream") as stream:  # default: only new events
        lines = stream.iter_lines()
        assert next(lines) == "event: run"
        assert post(_metric(2, 3, loss=2.0), _metric(1001, 4, loss=1.5)).json()["accepted"] == 2
        first_new = next(json.loads(line[5:]) for line in lines if line.startswith("data:") and '"seq"' in line)
    assert first_new["seq"] == 2
    run = server.run(run_id)
    assert run["last_seq"] == 1001 and run["step"] == 4 and run["latest"] == {"loss": 1.5}


# ---- 7: a full disk, an unwritable data dir ----------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a real file system that fills up (mounting needs root, as CI has)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(disk: Path) -> Path:
    ballast = disk / "ballast"
    subprocess.run(["dd", "if=/dev/zero", f"of={ballast}", "bs=4k"], capture_output=True, check=False)
    return ballast


@pytest.mark.slow  # fills a small disk
def test_a_full_disk_answers_507_with_a_message_and_nothing_is_lost(small_disk):
    (small_disk / "data").mkdir()
    server = LiveServer(small_disk / "data", {"CLIPLAB_MAX_CPU_RUNS": "0"}).start()
    try:
        run_id = running_run_in_live_server(server, RUN_TOKEN)
        auth = {"Authorization": f"Bearer {RUN_TOKEN}"}
        ballast = _fill(small_disk)
        answers = {
            "create": server.post("/api/runs", json={"name": "x" * 200, "config": {}, "tags": ["y" * 60] * 30}),
            "ingest": server.post(f"/api/runs/{run_id}/events", headers=auth, json={"events": [
                {"seq": i, "time": 1.0, "kind": "log", "level": "info", "message": "z" * 2000} for i in range(50)]}),
            "stop": server.post(f"/api/runs/{run_id}/stop"),
        }
        openapi = server.get("/openapi.json").json()
        for what, r in answers.items():
            assert r.status_code == 507, (what, r.status_code, r.text)
            assert "is full" in r.json()["detail"] and str(small_disk / "data") in r.json()["detail"]
        _conforms(openapi, "/api/runs/{run_id}/stop", "post", 507, answers["stop"].json())
        ballast.unlink()  # space again: the same requests go through, and what was stored is still there
        assert server.post("/api/runs", json={"config": {}}).status_code == 201
        assert server.run(run_id)["status"] == "running"
        assert server.post(f"/api/runs/{run_id}/stop").status_code == 200
    finally:
        server.stop()


@pytest.mark.slow  # a small disk and a server process
def test_serve_on_an_unwritable_data_dir_exits_2_with_one_line_naming_it(small_disk):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for data_dir in (small_disk, small_disk / "new"):
        done = subprocess.run([sys.executable, "-m", "trainer", "serve", "--data-dir", str(data_dir), "--no-demo",
                               "--port", "0"], capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and str(data_dir) in done.stderr and "Traceback" not in done.stderr
        assert "Read-only file system" in done.stderr


# ---- 9: limits ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # a `cliplab serve` process
def test_tags_names_bodies_and_cpu_resources_are_bounded(live_server):
    def field_of(body: Any) -> tuple[int, str]:
        r = live_server.post("/api/runs", json=body)
        return r.status_code, (r.json()["detail"][0]["field"] if r.status_code == 422 else r.text)

    assert field_of({"config": {}, "tags": [f"t{i}" for i in range(33)]}) == (422, "tags")
    assert field_of({"config": {}, "tags": ["x" * 65]}) == (422, "tags.0")
    assert field_of({"config": {"tags": ["y"] * 33}}) == (422, "tags")  # config fields are named as in a config
    assert field_of({"config": {}, "name": "n" * 201}) == (422, "name")
    assert field_of({"config": {}, "nproc": 64}) == (422, "nproc")
    assert field_of({"config": {"data": {"num_workers": 256}}}) == (422, "data.num_workers")
    fine = live_server.post("/api/runs", json={"config": {}, "tags": ["x" * 64] * 32, "name": "n" * 200})
    assert fine.status_code == 201, fine.text
    clone = live_server.post(f"/api/runs/{fine.json()['id']}/clone", json={"overrides": {"data.num_workers": 200}})
    assert clone.status_code == 422 and clone.json()["detail"][0]["field"] == "data.num_workers"
    too_big = live_server.post("/api/runs", content=b" " * (16 * 2**20 + 1), headers={"content-type": "application/json"})
    assert too_big.status_code == 413 and "16777216 bytes (CLIPLAB_MAX_BODY_BYTES)" in too_big.json()["detail"]


@pytest.mark.slow  # trainer processes
def test_a_deeply_nested_yaml_config_exits_2_with_a_message(tmp_path):
    config = tmp_path / "deep.yaml"
    config.write_text("train: " + "[" * 5000 + "]" * 5000 + "\n")
    done = subprocess.run([sys.executable, "-m", "trainer", "train", str(config), "--run-dir", str(tmp_path / "r")],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "nested too deeply" in done.stderr and str(config) in done.stderr
    assert "RecursionError" not in done.stderr and "Traceback" not in done.stderr


# ---- 1: no file content through error messages; runs read only where the server allows ------------------


@pytest.mark.slow  # several live servers
def test_paths_outside_the_readable_folders_are_422_naming_them_without_revealing_existence(live_server_factory,
                                                                                              tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "pairs.csv").write_text("filepath,caption\n")
    server = live_server_factory()
    roots = f"({server.data_dir.resolve()})"

    def errors(config: dict[str, Any]) -> dict[str, str]:
        r = server.post("/api/runs", json={"config": config})
        assert r.status_code == 422, r.text
        return {e["field"]: e["message"] for e in r.json()["detail"]}

    existing = errors({"data": {"train": str(elsewhere / "pairs.csv")}})["data.train"]
    missing = errors({"data": {"train": str(elsewhere / "nope.csv")}})["data.train"]
    assert roots in existing and "CLIPLAB_READABLE_DIRS" in existing
    assert existing.replace("pairs", "nope") == missing  # the same answer whether the file exists or not
    traversal = errors({"data": {"train": f"{server.data_dir}/../../../etc/passwd", "val": "/etc/hosts"},
                        "model": {"pretrained": "../../../../../etc/passwd"}})
    assert set(traversal) == {"data.train", "data.val", "model.pretrained"}
    assert all(roots in m and "root:" not in m for m in traversal.values())
    assert errors({"data": {"train": "/shards/{000..009}.tar"}})["data.train"].startswith("'/shards/{000..009}.tar'")
    # The admin lists the folder: the same config is accepted ...
    allowed = live_server_factory(readable_dirs=json.dumps([str(elsewhere)]))
    created = allowed.post("/api/runs", json={"config": {"data": {"train": str(elsewhere / "pairs.csv")}}})
    assert created.status_code == 201
    run_id = created.json()["id"]
    assert allowed.post(f"/api/runs/{run_id}/stop").json()["status"] == "stopped"
    (allowed.data_dir / "runs" / run_id / "checkpoints" / "step_000001").mkdir(parents=True)
    (allowed.data_dir / "runs" / run_id / "checkpoints" / "latest").write_text("step_000001\n")
    # ... and once the admin takes the folder off the list, the run may not resume reading it.
    allowed.env.pop("CLIPLAB_READABLE_DIRS")
    allowed.restart()
    resumed = allowed.post(f"/api/runs/{run_id}/resume")
    assert resumed.status_code == 422 and resumed.json()["detail"][0]["field"] == "data.train", resumed.text


@pytest.mark.slow  # trainer and server processes
def test_errors_about_unreadable_inputs_never_echo_file_content(tmp_path):
    """What the trainer says about a data file or pretrained file that is not one: the problem, not the bytes."""
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:SECRET-ROOT-LINE:/root:/bin/bash\n")
    labelled = tmp_path / "labels.csv"
    labelled.write_text("filepath,caption,label\na.png,cat,SECRET-CELL\n")
    for overrides in ([f"data.train={secret}", "data.val=null"], [f"data.train={labelled}", "data.val=null"],
                      [f"model.pretrained={secret}"]):
        done = subprocess.run([sys.executable, "-m", "trainer", "train", "--run-dir", str(tmp_path / "run"),
                               *(f"--set={o}" for o in overrides)], capture_output=True, text=True, timeout=300,
                              cwd=REPO)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "SECRET" not in done.stderr and "root:x" not in done.stderr, done.stderr[-2000:]
        assert str(tmp_path) in done.stderr  # the file is named, its content is not
