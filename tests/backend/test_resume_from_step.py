"""Resume a run from a checkpoint the user picks (a rewind past a loss spike, or the older complete step a damaged
`latest` names): `POST /api/runs/{id}/resume` with `checkpoint`.

The refusals and the launched command use the app in-process with nothing launched; one slow test trains a tiny
run for real, rewinds it and checks the trainer continued from the picked step and the charts follow it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from backend import store
from backend.models import Run
from backend.services.executors.base import resume_dir
from backend.services.executors.local import trainer_command
from backend.services.executors.slurm import trainer_argv

from tests.backend.test_attach_api import attach
from tests.backend.test_integration import file_events, tiny_config


def _ended_with_checkpoints(server: Any, steps: tuple[int, ...], status: str = "stopped", train_steps: int = 20,
                            best: int | None = None) -> dict[str, Any]:
    """A run that ended `status` at its last step, with a complete step directory (train_state.pt) per step."""
    run = server.client.post("/api/runs", json={"config": {"train": {"steps": train_steps}}}).json()
    checkpoints = Path(run["run_dir"]) / "checkpoints"
    for step in steps:
        (checkpoints / f"step_{step:06d}").mkdir(parents=True)
        (checkpoints / f"step_{step:06d}" / "train_state.pt").write_bytes(b"state")
    (checkpoints / "latest").write_text(f"step_{steps[-1]:06d}\n")
    if best is not None:
        (checkpoints / "best").write_text(f"step_{best:06d}\n")

    def end(session: Any) -> None:
        row = session.get(Run, run["id"])
        row.status, row.step = status, steps[-1]
        session.add(row)

    server.services.writer.call(end)
    return run


def _resume(server: Any, run_id: str, **body: Any) -> Any:
    return server.client.post(f"/api/runs/{run_id}/resume", json=body)


def _stored(server: Any, run_id: str) -> Run:
    return server.services.read(store.get_run, run_id)


def test_a_resume_from_a_picked_step_queues_the_run_and_its_trainer_resumes_from_that_step_dir(app_server):
    run = _ended_with_checkpoints(app_server, (4, 8, 12), best=4)
    r = _resume(app_server, run["id"], checkpoint="step_000008", overrides={"optim.lr": 1e-4})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued" and r.json()["resume_from"] == "step_000008"
    assert r.json()["config"]["optim"]["lr"] == 1e-4
    row, run_dir = _stored(app_server, run["id"]), Path(run["run_dir"])
    step_dir = str(run_dir / "checkpoints" / "step_000008")
    local = trainer_command(run_dir / "config.yaml", run_dir, 1, row.resume, resume_dir(row, run_dir))
    assert local[local.index("--resume") + 1] == step_dir
    slurm = trainer_argv("python", {"nodes": 1, "gpus_per_node": 0}, run_dir / "config.yaml", run_dir, row.resume,
                         resume_dir(row, run_dir))
    assert slurm[slurm.index("--resume") + 1] == step_dir


def test_latest_and_best_name_the_step_their_pointer_names_and_no_checkpoint_means_latest(app_server):
    run = _ended_with_checkpoints(app_server, (4, 8), best=4)
    assert _resume(app_server, run["id"], checkpoint="best").json()["resume_from"] == "step_000004"
    app_server.client.post(f"/api/runs/{run['id']}/stop")  # queued: stopped at once, to be resumed again
    assert _resume(app_server, run["id"], checkpoint="latest").json()["resume_from"] is None
    row, run_dir = _stored(app_server, run["id"]), Path(run["run_dir"])
    assert trainer_command(run_dir / "c.yaml", run_dir, 1, row.resume, resume_dir(row, run_dir))[-2:] == [
        "--resume", "latest"]


@pytest.mark.parametrize("checkpoint, says", [
    ("step_000006", "'step_000006' is not a complete step directory of this run"),
    ("../x", "'../x' is not a step directory name"),
    ("step_000004/../../x", "is not a step directory name"),
    ("/etc", "is not a step directory name"),
    ("wise_ft", "is not a step directory name"),
    ("step_000002", "'step_000002' is not a complete step directory"),  # no train_state.pt: not complete
    ("step_000009", "not a complete step directory"),  # a link to a folder outside the run dir
    ("best", "this run has no best"),
])
def test_a_checkpoint_that_is_no_complete_step_of_the_run_is_a_422_naming_them_and_launches_nothing(
        app_server, tmp_path, checkpoint, says):
    run = _ended_with_checkpoints(app_server, (4, 8))
    checkpoints = Path(run["run_dir"]) / "checkpoints"
    (checkpoints / "step_000002").mkdir()
    (checkpoints / "wise_ft").mkdir()
    elsewhere = tmp_path / "elsewhere" / "step_000009"
    elsewhere.mkdir(parents=True)
    (elsewhere / "train_state.pt").write_bytes(b"state")
    (checkpoints / "step_000009").symlink_to(elsewhere, target_is_directory=True)
    r = _resume(app_server, run["id"], checkpoint=checkpoint)
    assert r.status_code == 422, r.text
    [error] = r.json()["detail"]
    assert error["field"] == "checkpoint" and says in error["message"]
    assert "its complete ones: step_000004, step_000008" in error["message"]
    kept = app_server.client.get(f"/api/runs/{run['id']}").json()
    assert kept["status"] == "stopped" and kept["resume_from"] is None and not _stored(app_server, run["id"]).resume


def test_a_running_run_or_an_attached_one_is_not_resumed_from_a_step(app_server):
    run = _ended_with_checkpoints(app_server, (4, 8), status="running")
    r = _resume(app_server, run["id"], checkpoint="step_000004")
    assert r.status_code == 409 and "is running" in r.json()["detail"]
    assert app_server.client.get(f"/api/runs/{run['id']}").json()["status"] == "running"

    attached = attach(app_server, run_dir="/elsewhere/runs/a").json()["run"]
    r = _resume(app_server, attached["id"], checkpoint="step_000004")
    assert r.status_code == 409
    assert "cliplab train --resume /elsewhere/runs/a/checkpoints/step_000004 --run-dir /elsewhere/runs/a" in (
        r.json()["detail"])


def test_a_finished_run_rewinds_with_its_own_steps_but_not_from_its_last_step(app_server):
    run = _ended_with_checkpoints(app_server, (10, 20), status="finished", train_steps=20)
    last = _resume(app_server, run["id"], checkpoint="step_000020")
    assert last.status_code == 409 and 'where M > 20' in last.json()["detail"]
    rewound = _resume(app_server, run["id"], checkpoint="step_000010")  # steps 11..20 again, e.g. with a lower lr
    assert rewound.status_code == 200 and rewound.json()["resume_from"] == "step_000010", rewound.text


def test_the_checkpoint_list_says_which_steps_a_resume_can_start_from(app_server):
    run = _ended_with_checkpoints(app_server, (4, 8))
    checkpoints = Path(run["run_dir"]) / "checkpoints"
    (checkpoints / "step_000010").mkdir()  # being written, or damaged: no train_state.pt
    (checkpoints / "step_000010" / "model.safetensors").write_bytes(b"w")
    (checkpoints / "wise_ft").mkdir()
    (checkpoints / "wise_ft" / "model.safetensors").write_bytes(b"w")
    listed = {c["name"]: c["resumable"] for c in app_server.client.get(f"/api/runs/{run['id']}/checkpoints").json()}
    assert listed == {"step_000004": True, "step_000008": True, "step_000010": False, "wise_ft": False}


# ---- a real rewind ------------------------------------------------------------------------------------------


def _loss_points(server: Any, run_id: str) -> dict[int, float]:
    series = server.get(f"/api/runs/{run_id}/series", params={"names": "loss", "buckets": 20_000}).json()
    loss = series["series"]["loss"]
    assert len(loss["step"]) == len(set(loss["step"])), loss["step"]  # one point per step
    return dict(zip(loss["step"], loss["last"]))


@pytest.mark.slow
def test_a_run_rewound_to_an_older_step_continues_from_it_and_its_abandoned_steps_go(live_server_factory):
    server = live_server_factory(max_cpu_runs=1)
    config = tiny_config(steps=12)
    config["checkpoint"].update(every=4, keep_last=3)  # step_000004, step_000008 and the final step_000012
    run_id = server.post("/api/runs", json={"name": "rewind", "config": config}).json()["id"]
    first = server.wait_status(run_id, ("finished", "failed", "stopped"), 240)
    assert first["status"] == "finished", first
    names = [c["name"] for c in server.get(f"/api/runs/{run_id}/checkpoints").json()]
    assert names == ["step_000004", "step_000008", "step_000012"]
    before = _loss_points(server, run_id)
    assert sorted(before) == list(range(1, 13))

    # Back to step 4 with a lower learning rate, to end at step 10 this time.
    asked = time.time()
    resumed = server.post(f"/api/runs/{run_id}/resume", json={
        "checkpoint": "step_000004", "overrides": {"optim.lr": 1e-5, "train.steps": 10}})
    assert resumed.status_code == 200 and resumed.json()["resume_from"] == "step_000004", resumed.text
    done = server.wait_status(run_id, ("finished", "failed", "stopped"), 240)
    assert done["status"] == "finished" and done["step"] == 10, done
    assert [a["status"] for a in done["attempts"]] == ["finished", "finished"]

    events = file_events(done)
    restart = max(i for i, e in enumerate(events) if e["kind"] == "status" and e["status"] == "starting")
    [running] = [e for e in events[restart:] if e["kind"] == "status" and e["status"] == "running"]
    assert running["step"] == 4  # the picked step, not latest's 12
    new_loss = {e["step"]: e["values"]["loss"] for e in events[restart:] if e["kind"] == "metric"}
    assert sorted(new_loss) == list(range(5, 11))
    after = _loss_points(server, run_id)  # the abandoned branch's points past step 4 are gone from the chart
    assert sorted(after) == list(range(1, 11))
    assert {s: after[s] for s in range(1, 5)} == {s: before[s] for s in range(1, 5)}
    assert all(after[s] == pytest.approx(new_loss[s]) for s in range(5, 11))
    assert any(after[s] != before[s] for s in range(5, 11))  # a lower lr: another branch

    launch = [line for line in server.get(f"/api/runs/{run_id}/logs").json()["lines"] if "launch:" in line][-1]
    assert f"--resume {done['run_dir']}/checkpoints/step_000004" in launch
    log_events = [e["message"] for e in events[restart:] if e["kind"] == "log"]
    assert any("before this run's newer checkpoints step_000008, step_000012" in m for m in log_events), log_events
    # The resumed branch re-saved step 8 (replacing the abandoned one) and removed the abandoned step 12 at that
    # first save; keep_last counts only its own steps, so step 4, where it went on from, is still there.
    checkpoints = Path(done["run_dir"]) / "checkpoints"
    listed = {c["name"]: c["kind"] for c in server.get(f"/api/runs/{run_id}/checkpoints").json()}
    assert listed == {"step_000004": "checkpoint", "step_000008": "checkpoint", "step_000010": "latest,best"}
    assert all((checkpoints / n / "train_state.pt").stat().st_mtime > asked for n in ("step_000008", "step_000010"))


# ---- a rewound run's similarity matrices ----------------------------------------------------------------------


def _matrix(seq: int, step: int, diagonal: float) -> dict[str, Any]:
    return {"seq": seq, "time": 3000.0 + seq, "kind": "matrix", "step": step, "captions": ["a", "b"],
            "thumbnails": [], "similarity": [[diagonal, 0.1], [0.1, diagonal]], "logit_scale": 14.0}


def _running(seq: int, step: int) -> dict[str, Any]:
    return {"seq": seq, "time": 3000.0 + seq, "kind": "status", "status": "running", "reason": None, "step": step}


def test_a_matrix_step_only_the_abandoned_branch_recorded_is_a_404_naming_the_resume_and_a_redone_one_is_new(
        app_server):
    made = attach(app_server, run_dir="/elsewhere/runs/rewound", live=False).json()
    run_id, token = made["run"]["id"], made["token"]
    events = [_running(0, 0), _matrix(1, 4, 0.4), _matrix(2, 8, 0.8), _matrix(3, 12, 0.12),
              _running(4, 4), _matrix(5, 8, 0.88)]  # rewound to step 4: step 8 redone, step 12 abandoned
    r = app_server.client.post(f"/api/runs/{run_id}/events", json={"events": events},
                               headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    matrices = f"/api/runs/{run_id}/matrices"
    assert [m["step"] for m in app_server.client.get(matrices).json()] == [4, 8]

    abandoned = app_server.client.get(f"{matrices}/12")
    assert abandoned.status_code == 404, abandoned.text
    assert "step 12 any more" in abandoned.json()["detail"]
    assert "superseded by a resume from step 4" in abandoned.json()["detail"]
    redone = app_server.client.get(f"{matrices}/8").json()
    assert (redone["seq"], redone["similarity"][0][0]) == (5, 0.88)  # the new branch's, not the abandoned 0.8
    assert app_server.client.get(f"{matrices}/4").json()["seq"] == 1  # before the rewind: kept
    never = app_server.client.get(f"{matrices}/6")
    assert never.status_code == 404 and "superseded" not in never.json()["detail"]
