"""The REST API against `cliplab serve` in a subprocess (runs stay queued: no trainer processes here)."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def _create(server, **body) -> dict:
    r = server.post("/api/runs", json={"config": {"train": {"steps": 10}}, **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_importing_the_backend_does_not_import_torch():
    code = ("import sys, backend.app, backend.serve, backend.services.launcher, backend.routes.configs\n"
            "from backend.routes.configs import presets\n"
            "presets()\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow  # a `cliplab serve` process
def test_health_openapi_docs_dashboard_and_plotly_are_served(live_server):
    assert live_server.get("/api/health").json()["ok"] is True
    assert "/api/runs" in live_server.get("/openapi.json").json()["paths"]
    assert "swagger" in live_server.get("/docs").text.lower()
    index = live_server.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    plotly = live_server.get("/vendor/plotly.min.js")
    assert plotly.status_code == 200 and len(plotly.content) > 1_000_000
    assert live_server.get("/__init__.py").status_code == 404  # the package file beside the dashboard


@pytest.mark.slow  # a `cliplab serve` process
def test_invalid_configs_are_422_naming_each_field_and_store_nothing(live_server):
    bad = {"optim": {"lr": -1, "lerning_rate": 3}, "train": {"precision": "fp8"}, "model": {"preset": "ViT-Q-99"}}
    r = live_server.post("/api/runs", json={"config": bad})
    assert r.status_code == 422
    fields = {e["field"] for e in r.json()["detail"]}
    assert {"optim.lr", "optim.lerning_rate", "train.precision"} <= fields
    preset = live_server.post("/api/runs", json={"config": {"model": {"preset": "ViT-Q-99"}}})
    assert preset.status_code == 422 and preset.json()["detail"][0]["field"] == "model.preset"
    assert "tiny-vit" in preset.json()["detail"][0]["message"]  # says what would be right
    for body, field in (({"config": {}, "gpus": 3}, "gpus"), ({"config": {}, "nproc": 0}, "nproc"),
                        ({"config": [1, 2]}, "config"), ({"config": {}, "colour": "red"}, "colour")):
        r = live_server.post("/api/runs", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, r.text
    nan = live_server.post("/api/runs", content=b'{"config": {"optim": {"betas": [NaN, 0.9]}}}',
                           headers={"Content-Type": "application/json"})
    assert nan.status_code == 422 and nan.json()["detail"][0]["field"] == "config"
    not_json = live_server.post("/api/runs", content=b"{", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 422
    assert live_server.get("/api/runs").json()["total"] == 0


@pytest.mark.slow  # a `cliplab serve` process
def test_config_validation_and_bundled_configs(live_server):
    ok = live_server.post("/api/configs/validate", json={"config": {"optim": {"lr": 0.01}}}).json()
    assert ok["valid"] and ok["resolved"]["optim"]["lr"] == 0.01 and ok["resolved"]["train"]["steps"] > 0
    bad = live_server.post("/api/configs/validate", json={"config": {"loss": {"kind": "triplet"}}}).json()
    assert not bad["valid"] and bad["errors"][0]["field"] == "loss.kind"
    configs = live_server.get("/api/configs").json()
    assert configs and all({"name", "yaml", "config", "default"} <= set(c) for c in configs)
    names = [c["name"] for c in configs]
    if "cpu-demo" in names:  # the new-run form starts from the CPU demo
        assert configs[0]["name"] == "cpu-demo" and configs[0]["default"]
    presets = live_server.get("/api/presets").json()
    assert any(p["name"] == "tiny-vit" and p["description"] for p in presets)


@pytest.mark.slow  # a `cliplab serve` process
def test_unknown_run_ids_are_404_naming_the_id(live_server):
    for method, path in (("GET", ""), ("POST", "/stop"), ("POST", "/resume"), ("POST", "/clone"),
                         ("DELETE", ""), ("GET", "/series"), ("GET", "/logs"), ("GET", "/checkpoints"),
                         ("GET", "/stream"), ("GET", "/matrices/3"), ("GET", "/config")):
        r = live_server.client.request(method, f"/api/runs/r-nope{path}")
        assert r.status_code == 404 and "r-nope" in r.json()["detail"], (method, path, r.text)


@pytest.mark.slow  # a `cliplab serve` process
def test_runs_are_listed_with_filters_paging_and_sorting(live_server):
    a = _create(live_server, name="alpha", tags=["sweep", "lr"])
    b = _create(live_server, name="beta", tags=["sweep"])
    c = _create(live_server, name="Alphabet soup", tags=["sweeping"])
    live_server.post(f"/api/runs/{b['id']}/stop")
    ids = lambda params: [r["id"] for r in live_server.get("/api/runs", params=params).json()["items"]]  # noqa: E731
    assert ids({}) == [c["id"], b["id"], a["id"]]  # newest first
    assert ids({"sort": "name"}) == [a["id"], c["id"], b["id"]]
    assert ids({"name": "alpha"}) == [c["id"], a["id"]]
    assert ids({"tag": "sweep"}) == [b["id"], a["id"]]  # exact tag, not "sweeping"
    assert ids({"status": "stopped"}) == [b["id"]]
    assert ids({"status": "queued,stopped", "sort": "created_at"}) == [a["id"], b["id"], c["id"]]
    page = live_server.get("/api/runs", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 3 and [r["id"] for r in page["items"]] == [b["id"], a["id"]]
    assert live_server.get("/api/runs", params={"sort": "colour"}).status_code == 422
    assert live_server.get("/api/runs", params={"status": "sleeping"}).json()["detail"][0]["field"] == "status"
    assert live_server.get("/api/runs", params={"limit": 0}).status_code == 422


@pytest.mark.slow  # a `cliplab serve` process
def test_queued_run_stop_clone_resume_and_delete(live_server):
    run = _create(live_server, name="base", tags=["t"], gpus=0)
    assert run["status"] == "queued" and run["model"] == "tiny-vit" and run["dataset"] == "demo"
    cfg = live_server.get(f"/api/runs/{run['id']}/config").json()
    assert cfg["config"]["train"]["steps"] == 10 and "steps: 10" in cfg["yaml"]

    clone = live_server.post(f"/api/runs/{run['id']}/clone", json={"overrides": {"optim.lr": 1e-4}})
    assert clone.status_code == 201
    cloned = clone.json()
    assert cloned["id"] != run["id"] and cloned["config"]["optim"]["lr"] == 1e-4
    assert cloned["config"]["train"]["steps"] == 10 and cloned["name"] == "base (clone)"
    bad = live_server.post(f"/api/runs/{run['id']}/clone", json={"overrides": {"optim.lr": "fast"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "optim.lr"
    nested = live_server.post(f"/api/runs/{run['id']}/clone", json={"overrides": {"name.first": 1}})
    assert nested.status_code == 422

    resume = live_server.post(f"/api/runs/{run['id']}/resume")
    assert resume.status_code == 409 and "queued" in resume.json()["detail"]
    stopped = live_server.post(f"/api/runs/{run['id']}/stop").json()
    assert stopped["status"] == "stopped" and stopped["reason"]
    assert live_server.post(f"/api/runs/{run['id']}/stop").status_code == 409
    no_ckpt = live_server.post(f"/api/runs/{run['id']}/resume")
    assert no_ckpt.status_code == 409 and "checkpoint" in no_ckpt.json()["detail"]

    assert live_server.client.delete(f"/api/runs/{run['id']}").status_code == 204
    assert live_server.get(f"/api/runs/{run['id']}").status_code == 404
    left = live_server.get("/api/runs").json()
    assert left["total"] == 1 and left["items"][0]["id"] == cloned["id"]  # refused clones stored nothing


def _tiny_dataset(data_dir: Path) -> Path:
    root = data_dir / "datasets" / "shapes"
    (root / "img").mkdir(parents=True)
    rows = ["filepath,caption,label"]
    for i, colour in enumerate(("red", "green", "blue")):
        Image.new("RGB", (8, 8), colour).save(root / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,a {colour} square,{i}")
    rows.append("/etc/passwd,not an image,0")  # a CSV row naming a non-image file is never served
    (root / "val.csv").write_text("\n".join(rows) + "\n")
    (root / "dataset.json").write_text('{"name": "shapes", "source": "test", "classes": ["r", "g", "b"], '
                                      '"counts": {"val": 4}}')
    return root


@pytest.mark.slow  # a `cliplab serve` process
def test_datasets_are_listed_and_previewed_from_their_csv_only(live_server):
    _tiny_dataset(live_server.data_dir)
    listed = {d["name"]: d for d in live_server.get("/api/datasets").json()}
    assert {"demo", "shapes"} <= set(listed)
    assert listed["shapes"]["val"].endswith("val.csv") and listed["shapes"]["train"] is None
    assert listed["shapes"]["classes"] == ["r", "g", "b"] and listed["shapes"]["counts"] == {"val": 4}
    pairs = live_server.get("/api/datasets/shapes/preview", params={"n": 10}).json()
    assert [p["caption"] for p in pairs] == ["a red square", "a green square", "a blue square", "not an image"]
    image = live_server.get(pairs[1]["image_url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).getpixel((0, 0)) == (0, 128, 0)
    demo = live_server.get("/api/datasets/demo/preview", params={"n": 6}).json()
    assert len(demo) == 6 and live_server.get(demo[0]["image_url"]).status_code == 200
    # The demo's val CSV is class-ordered; the preview samples across it, not its first (red) rows.
    assert len({p["label"] for p in demo}) == 6
    assert demo == live_server.get("/api/datasets/demo/preview", params={"n": 6}).json()  # stable
    for path in ("/api/datasets/shapes/images/val/3", "/api/datasets/shapes/images/val/99",
                 "/api/datasets/shapes/images/val/-1", "/api/datasets/..%2f..%2fetc/preview",
                 "/api/datasets/%2e%2e/preview", "/api/datasets/nope/preview"):
        r = live_server.get(path)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert "root:" not in r.text
    assert live_server.get("/api/datasets/shapes/preview", params={"split": "../x"}).status_code == 422
    for row in (4, 99999):  # past the end of a short CSV: its length, not the preview cap
        assert live_server.get(f"/api/datasets/shapes/images/val/{row}").json()["detail"] == \
            "val.csv of dataset 'shapes' has only 4 rows"


@pytest.mark.slow  # a `cliplab serve` process
def test_a_prepared_dataset_with_a_unicode_name_and_tiff_images_is_listed_and_previewed(live_server_factory,
                                                                                         tmp_path):
    photos = tmp_path / "фото кошки"
    # Images stay where they are, outside the data dir: the admin lists their folder as readable.
    server = live_server_factory(demo=False, readable_dirs=json.dumps([str(photos)]))
    for cls, colour in (("рыжая", (200, 80, 0)), ("чёрная", (0, 0, 0))):
        for i in range(4):
            (photos / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), colour).save(photos / cls / f"{i}.tif")
    prepared = subprocess.run([sys.executable, "-m", "trainer", "prepare", "folders", str(photos), "--data-dir",
                               str(server.data_dir), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
    assert prepared.returncode == 0, prepared.stderr
    listed = {d["name"]: d for d in server.get("/api/datasets").json()}
    assert listed["фото-кошки"]["counts"]["val"] == 4
    pairs = server.get("/api/datasets/фото-кошки/preview", params={"n": 4}).json()
    assert sorted(p["caption"] for p in pairs) == ["a photo of a рыжая."] * 2 + ["a photo of a чёрная."] * 2
    image = server.get(pairs[0]["image_url"])
    assert image.status_code == 200 and Image.open(io.BytesIO(image.content)).format == "TIFF"


def _fake_checkpoint(run_dir: Path) -> Path:
    step = run_dir / "checkpoints" / "step_000004"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(b"weights" * 100)
    (step / "model.json").write_text('{"preset": "tiny-vit"}')
    (run_dir / "checkpoints" / "latest").write_text("step_000004\n")
    (run_dir / "stdout.log").write_text("".join(f"line {i}\n" for i in range(500)))
    (run_dir.parent / "secret.txt").write_text("TOP-SECRET-CONTENT")
    (step / "escape").symlink_to(run_dir.parent / "secret.txt")
    return step


def _raw_get(port: int, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


@pytest.mark.slow  # a `cliplab serve` process
def test_checkpoints_and_logs_are_served_from_inside_the_run_dir_only(live_server):
    run = _create(live_server)
    run_dir = Path(run["run_dir"])
    _fake_checkpoint(run_dir)
    ckpts = live_server.get(f"/api/runs/{run['id']}/checkpoints").json()
    assert [(c["name"], c["step"], c["kind"]) for c in ckpts] == [("step_000004", 4, "latest")]
    assert ckpts[0]["size_bytes"] >= 700
    one = live_server.get(f"/api/runs/{run['id']}/checkpoints/step_000004/download",
                          params={"file": "model.safetensors"})
    assert one.status_code == 200 and one.content == b"weights" * 100
    whole = live_server.get(f"/api/runs/{run['id']}/checkpoints/step_000004/download")
    assert whole.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(whole.content)) as tar:
        names = sorted(tar.getnames())
        assert names == ["step_000004/model.json", "step_000004/model.safetensors"]  # the symlink stays out
        assert tar.extractfile("step_000004/model.safetensors").read() == b"weights" * 100
    base = f"/api/runs/{run['id']}/checkpoints"
    latest = live_server.get(f"{base}/latest/download", params={"file": "model.safetensors"})  # the pointer
    assert latest.status_code == 200 and latest.content == b"weights" * 100
    assert f"{run['id']}-step_000004-model.safetensors" in latest.headers["content-disposition"]
    assert live_server.get(f"{base}/best/download").json()["detail"] == "this run has no best checkpoint yet"
    for path, params in ((f"{base}/step_000004/download", {"file": "../../config.yaml"}),
                         (f"{base}/step_000004/download", {"file": "escape"}),
                         (f"{base}/step_000004/download", {"file": "/etc/passwd"}),
                         (f"{base}/..%2F..%2F/download", {}),
                         (f"{base}/%2e%2e/download", {"file": "secret.txt"}),
                         (f"{base}/%2e%2e/download", {}),
                         (f"{base}/..%5c..%5csecret.txt/download", {}),
                         (f"{base}/step_000009/download", {})):
        r = live_server.get(path, params=params)
        assert r.status_code == 404, (path, params, r.status_code)
        assert "TOP-SECRET" not in r.text and "root:" not in r.text
    for raw_path in (f"{base}/../../../../../etc/passwd", f"{base}/step_000004/download?file=..%2F..%2Fconfig.yaml",
                     f"{base}/%2E%2E%2F%2E%2E/download?file=secret.txt"):
        status, body = _raw_get(live_server.port, raw_path)  # as sent, without a client normalising the path
        assert status == 404, (raw_path, status)
        assert "TOP-SECRET" not in body and "root:" not in body
    logs = live_server.get(f"/api/runs/{run['id']}/logs", params={"tail": 3}).json()
    assert logs["lines"] == ["line 497", "line 498", "line 499"] and logs["events"] == []
    assert live_server.get(f"/api/runs/{run['id']}/matrices").json() == []
    assert live_server.get(f"/api/runs/{run['id']}/matrices/4").status_code == 404


@pytest.mark.slow  # a `cliplab serve` process
def test_oversized_bodies_get_413_with_the_limit_named(live_server_factory):
    server = live_server_factory(demo=False, max_body_bytes=4096)
    r = server.post("/api/runs", json={"config": {}, "name": "x" * 5000})
    assert r.status_code == 413 and "4096" in r.json()["detail"]
    assert server.get("/api/runs").json()["total"] == 0


@pytest.mark.slow  # a `cliplab serve` process
def test_first_start_log_names_each_migration_and_nothing_of_alembic_internals(live_server):
    log = live_server.log()
    assert "Running upgrade  -> 0001" in log  # a user sees their database being created or upgraded
    assert "setup plugin" not in log, log  # alembic >= 1.16 announces its autogenerate plugins at INFO


def test_a_bad_setting_stops_serve_with_its_variable_or_flag_named_and_no_secret_or_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPLAB_")}
    env.update(CLIPLAB_MAX_CPU_RUNS="many", CLIPLAB_NOTIFY_URLS='["ftp://me:hunter2@hooks.example/T0/secret-path"]')
    refused = subprocess.run([sys.executable, "-m", "trainer", "serve", "--no-demo", "--data-dir", str(tmp_path),
                              "--public-url", "dash.lab:8000"], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    lines = refused.stderr.splitlines()
    assert any(line.startswith("cliplab serve: error: CLIPLAB_MAX_CPU_RUNS: Input should be a valid integer")
               for line in lines), lines
    assert any("CLIPLAB_NOTIFY_URLS: entry 0 (ftp://hooks.example/…)" in line for line in lines), lines
    assert any("--public-url: 'dash.lab:8000' is not an http(s) URL" in line for line in lines), lines
    assert "hunter2" not in refused.stderr and "secret-path" not in refused.stderr
    assert not (tmp_path / "cliplab.db").exists()


@pytest.mark.slow  # a `cliplab serve` process
def test_system_reports_cpu_memory_and_disk(live_server):
    info = live_server.get("/api/system").json()
    assert info["cpu"]["count"] >= 1 and info["disk"]["total"] > info["disk"]["free"] > 0
    assert isinstance(info["gpus"], list) and info["memory"]["total"] > 0


@pytest.mark.slow  # a `cliplab serve` process
def test_off_loopback_every_call_needs_the_token_and_the_browser_logs_in_by_url(live_server_factory):
    server = live_server_factory(demo=False, host="0.0.0.0")
    token = (server.data_dir / "token").read_text().strip()
    assert token and f"?token={token}" in server.log()  # generated, saved and printed on first start
    assert (server.data_dir / "token").stat().st_mode & 0o077 == 0
    assert server.get("/api/health").status_code == 200  # liveness stays open
    for path in ("/api/runs", "/api/system", "/", "/docs", "/openapi.json", "/api/stream"):
        r = server.get(path)
        assert r.status_code == 401, path
    assert server.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert server.get("/api/runs", headers={"Authorization": "Bearer caf\xe9".encode("latin-1")}).status_code == 401
    assert httpx.get(f"{server.base_url}/api/runs", headers={"Cookie": "cliplab_token=\xe9t\xe9".encode("latin-1")}
                     ).status_code == 401
    assert server.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    login = server.get("/", params={"token": token})
    assert login.status_code == 303 and "HttpOnly" in login.headers["set-cookie"]
    with httpx.Client(base_url=server.base_url) as browser:
        browser.get("/", params={"token": token}, follow_redirects=True)
        assert browser.get("/api/runs").status_code == 200
        assert browser.get("/").status_code == 200
    # Trainers authenticate with their run token instead, so the server token is not asked for there.
    r = server.post("/api/runs/r-x/events", json={"events": []})
    assert r.status_code == 404
    # Reading events is not exempt (a fresh client: `server.client` holds the login cookie by now).
    assert httpx.get(f"{server.base_url}/api/runs/r-x/events").status_code == 401
    # The token survives a restart.
    server.restart()
    assert server.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200


@pytest.mark.slow  # a `cliplab serve` process
def test_host_header_and_cross_origin_requests_are_checked(live_server):
    assert live_server.get("/api/runs", headers={"Host": "evil.example"}).status_code == 400
    cross = live_server.post("/api/runs", json={"config": {}}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "evil.example" in cross.json()["detail"]
    same = live_server.post("/api/runs", json={"config": {}},
                            headers={"Origin": live_server.base_url})
    assert same.status_code == 201
    read = live_server.get("/api/runs", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in read.headers
    assert not re.search("evil", str(read.headers))


@pytest.mark.slow  # a `cliplab serve` process
def test_out_of_range_and_malformed_parameters_are_4xx_never_500(live_server):
    run = _create(live_server)
    base = f"/api/runs/{run['id']}"
    huge = str(2**70)
    for path, params in ((f"{base}/series", {"start": huge}), (f"{base}/series", {"end": "-5"}),
                         (f"{base}/series", {"buckets": 0}), (f"{base}/series", {"buckets": 10**6}),
                         (f"{base}/events", {"after": huge}), (f"{base}/matrices/{huge}", {}),
                         (f"{base}/matrices/abc", {}), (f"{base}/logs", {"tail": -1}), ("/api/runs", {"offset": huge}),
                         ("/api/runs", {"limit": "many"}), (f"{base}/stream", {"after": huge}),
                         ("/api/datasets/demo/images/val/" + huge, {}), ("/api/datasets/demo/preview", {"n": 10**6})):
        r = live_server.get(path, params=params)
        assert 400 <= r.status_code < 500, (path, params, r.status_code, r.text)
    with live_server.client.stream("GET", f"{base}/stream", headers={"Last-Event-ID": huge}) as r:
        assert r.status_code == 200
        first = next(r.iter_lines())
        assert first == "event: run"
    for body in ({"overrides": {"optim.lr": 1e-4}, "extra": 1}, {"overrides": "lr=1"}, [1]):
        r = live_server.post(f"{base}/clone", json=body)
        assert r.status_code == 422, (body, r.text)
    assert live_server.get("/api/runs").json()["total"] == 1
