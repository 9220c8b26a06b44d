"""Editing a run after it started: PATCH /api/runs/{id} (name, notes, tags), the tag rule, the `q` filter."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow  # each test starts a `cliplab serve` process


def _create(server: Any, **body: Any) -> dict[str, Any]:
    r = server.post("/api/runs", json={"config": {"train": {"steps": 10}}, **body})
    assert r.status_code == 201, r.text
    return r.json()


def _fields(response: Any) -> list[str]:
    return sorted(e["field"] for e in response.json()["detail"])


def test_patch_changes_name_notes_and_tags_and_leaves_the_rest(live_server):
    run = _create(live_server, name="lr sweep 1", tags=["sweep"])
    assert run["notes"] == ""
    r = live_server.client.patch(f"/api/runs/{run['id']}", json={"notes": "warmup too short?\nloss spikes at 300"})
    assert r.status_code == 200, r.text
    assert r.json()["notes"] == "warmup too short?\nloss spikes at 300"
    assert r.json()["name"] == "lr sweep 1" and r.json()["tags"] == ["sweep"]  # left out: unchanged
    r = live_server.client.patch(f"/api/runs/{run['id']}", json={"name": "lr 3e-4", "tags": [" best ", "sweep", "best"]})
    after = live_server.run(run["id"])
    assert after["name"] == "lr 3e-4" and after["tags"] == ["best", "sweep"]  # trimmed, repeats dropped
    assert after["notes"] == "warmup too short?\nloss spikes at 300"
    assert after["config"] == run["config"]  # the config the trainer runs with is not rewritten
    cleared = live_server.client.patch(f"/api/runs/{run['id']}", json={"notes": "", "tags": []}).json()
    assert cleared["notes"] == "" and cleared["tags"] == []
    # A clone starts from the run's current tags.
    clone = live_server.post(f"/api/runs/{run['id']}/clone", json={}).json()
    assert clone["name"] == "lr 3e-4 (clone)" and clone["tags"] == []


def test_patch_validates_like_create_naming_the_field(live_server):
    run = _create(live_server)
    patch = lambda body: live_server.client.patch(f"/api/runs/{run['id']}", json=body)  # noqa: E731
    for name in ("", "   "):
        assert _fields(patch({"name": name})) == ["name"]
    assert _fields(patch({"name": "x" * 201})) == ["name"]
    assert _fields(patch({"tags": ["ok", " "]})) == ["tags.1"]
    assert _fields(patch({"tags": ["t" * 65]})) == ["tags.0"]
    assert _fields(patch({"tags": [f"t{i}" for i in range(33)]})) == ["tags"]
    assert _fields(patch({"notes": "n" * 10_001})) == ["notes"]
    assert _fields(patch({"status": "finished"})) == ["status"]
    assert patch({"tags": "one"}).status_code == 422
    assert live_server.client.patch("/api/runs/r-nope", json={"notes": "x"}).status_code == 404
    assert live_server.run(run["id"])["name"] == run["name"]  # nothing was stored by the refused requests
    # The same tag rule on create, from the body or from the config.
    created = live_server.post("/api/runs", json={"config": {}, "tags": ["t" * 65]})
    assert created.status_code == 422 and _fields(created) == ["tags.0"]
    from_config = live_server.post("/api/runs", json={"config": {"tags": [f"t{i}" for i in range(40)]}})
    assert from_config.status_code == 422 and _fields(from_config) == ["tags"]
    cloned = live_server.post(f"/api/runs/{run['id']}/clone", json={"tags": [""]})
    assert cloned.status_code == 422 and _fields(cloned) == ["tags.0"]


def test_q_finds_runs_by_name_notes_or_tags_case_insensitively(live_server):
    a = _create(live_server, name="baseline", notes="Reference run for the LR sweep")
    b = _create(live_server, name="sweep-2", tags=["Fragile"])
    c = _create(live_server, name="other")
    live_server.client.patch(f"/api/runs/{c['id']}", json={"notes": "diverged: lr 1e-2 is too high"})

    def found(**params: Any) -> set[str]:
        return {r["id"] for r in live_server.get("/api/runs", params=params).json()["items"]}

    assert found(q="lr") == {a["id"], c["id"]}
    assert found(q="SWEEP") == {a["id"], b["id"]}
    assert found(q="fragile") == {b["id"]}
    assert found(q="DIVERGED") == {c["id"]}
    assert found(q="100%") == set()  # LIKE wildcards are matched literally
    assert found(q="lr", name="base") == {a["id"]}
    assert live_server.get("/api/runs", params={"q": "diverged"}).json()["total"] == 1


def test_tag_edits_apply_to_the_stored_tags_so_concurrent_edits_keep_both(live_server):
    run = _create(live_server, tags=["base", "old"])
    patch = lambda body: live_server.client.patch(f"/api/runs/{run['id']}", json=body)  # noqa: E731
    # Two clients that read ["base", "old"] and each add a tag: with whole lists the second write lost the first tag.
    assert patch({"add_tags": ["mine"]}).json()["tags"] == ["base", "old", "mine"]
    assert patch({"add_tags": [" yours ", "mine"], "remove_tags": ["old"]}).json()["tags"] == ["base", "mine", "yours"]
    assert patch({"remove_tags": ["never-there"]}).json()["tags"] == ["base", "mine", "yours"]
    assert _fields(patch({"tags": ["x"], "add_tags": ["y"]})) == ["tags"]
    assert _fields(patch({"add_tags": [" "]})) == ["add_tags.0"]
    full = _create(live_server, tags=[f"t{i}" for i in range(32)])
    over = live_server.client.patch(f"/api/runs/{full['id']}", json={"add_tags": ["one-too-many"]})
    assert _fields(over) == ["tags"] and "at most 32" in over.json()["detail"][0]["message"]
    assert live_server.run(full["id"])["tags"] == [f"t{i}" for i in range(32)]  # nothing stored
