"""Hardening against a hostile or careless client, through the real server (`cliplab serve` on 127.0.0.1):
the error contract in /openapi.json, bad text, headers, symlinks, malformed datasets, limits, a full disk."""

from __future__ import annotations

from typing import Any

import jsonschema


def _schema_of(openapi: dict[str, Any], path: str, method: str, code: int) -> dict[str, Any]:
    """The JSON schema /openapi.json declares for one answer, with its $refs resolvable."""
    content = openapi["paths"][path][method]["responses"][str(code)]["content"]["application/json"]["schema"]
    return {**content, "components": openapi["components"]}


def _conforms(openapi: dict[str, Any], path: str, method: str, code: int, body: Any) -> None:
    jsonschema.validate(body, _schema_of(openapi, path, method, code))


# ---- 10: the OpenAPI document tells the truth ----------------------------------------------------------


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
