"""The SLURM executor end to end: `cliplab serve --executor slurm` against a real two-node SLURM (munged,
slurmctld, two slurmd) that the `slurm_cluster` fixture starts, training the CPU demo config in batch jobs.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.backend.test_integration import assert_database_matches_events_file, file_events, tiny_config, wait_step
from tests.backend_fixtures import wait_until

pytestmark = pytest.mark.slow


def slurm_server(factory: Any, cluster: Any, tmp_path: Path, **slurm: Any) -> Any:
    """A live server whose default executor is SLURM, configured through a TOML file as an admin would."""
    table = {"partition": "debug", "partitions": ["debug", "solo"], "max_nodes": 2, "max_gpus_per_node": 0,
             "cpus_per_task": 1, "poll_s": 0.5, **slurm}
    lines = ['executors = ["slurm", "local"]', "[slurm]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    lines += ["[slurm.env]", f"SLURM_CONF = {json.dumps(str(cluster.conf))}"]
    path = tmp_path / f"cliplab-{len(list(tmp_path.glob('cliplab-*.toml')))}.toml"
    path.write_text("\n".join(lines) + "\n")
    return factory(args=["--config", str(path)], stop_grace_s=60, max_cpu_runs=1)


def squeue(cluster: Any, job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=cluster.client_env(),
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def create(server: Any, steps: int, **body: Any) -> dict[str, Any]:
    created = server.post("/api/runs", json={"config": tiny_config(steps=steps), **body})
    assert created.status_code == 201, created.text
    return created.json()


def wait_job(server: Any, run_id: str, timeout: float = 60) -> dict[str, Any]:
    return wait_until(lambda: (lambda r: r if r["slurm_job_id"] else None)(server.run(run_id)), timeout, 0.3,
                      f"run {run_id} to get a SLURM job id")


def training_job(server: Any, steps: int, until_step: int) -> tuple[dict[str, Any], str]:
    """A SLURM run created and trained up to `until_step`: (the run as created, its job id)."""
    run = create(server, steps=steps)
    job_id = wait_job(server, run["id"])["slurm_job_id"]
    wait_step(server, run["id"], until_step)
    return run, job_id


HOSTILE_NAME = "e2e\n#SBATCH --partition=solo\n$(touch pwn1) `touch pwn2`; touch pwn3 #"  # pwn*: in the run dir


def test_a_slurm_run_trains_to_finished_with_its_job_id_charts_and_matrix(live_server_factory, slurm_cluster,
                                                                          tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    system = server.get("/api/system").json()["executors"]
    assert system["default"] == "slurm" and system["enabled"] == ["slurm", "local"]
    partitions = {p["name"]: p for p in system["details"]["slurm"]["partitions"]}  # from sinfo
    assert partitions["debug"]["total"] == 2 and partitions["solo"]["total"] == 1
    assert partitions["debug"]["idle"] + partitions["debug"]["allocated"] == 2
    run = create(server, steps=6, name=HOSTILE_NAME)
    assert run["executor"] == "slurm" and run["slurm"]["partition"] == "debug" and run["slurm"]["nodes"] == 1
    job_id = wait_job(server, run["id"])["slurm_job_id"]
    assert squeue(slurm_cluster, job_id) in ("PENDING", "RUNNING", "COMPLETING", "COMPLETED")
    done = server.wait_status(run["id"], ("finished", "failed", "stopped"), 240)
    assert done["status"] == "finished", (done, server.get(f"/api/runs/{run['id']}/logs").json()["lines"][-30:])
    assert done["slurm_job_id"] == job_id and done["slurm_nodelist"] in ("n1", "n2")
    assert done["slurm_partition"] == "debug" and done["exit_code"] == 0 and done["step"] == 6
    assert_database_matches_events_file(server, done)
    assert server.get(f"/api/runs/{run['id']}/evals").json() and server.get(f"/api/runs/{run['id']}/matrices").json()
    lines = server.get(f"/api/runs/{run['id']}/logs").json()["lines"]
    assert any(f"submitted SLURM job {job_id}" in line for line in lines)  # the logs view reads --output
    assert any(f"SLURM job {job_id} on" in line for line in lines)
    script = (Path(done["run_dir"]) / "slurm-job.sh").read_text()
    assert "#SBATCH --partition=debug" in script and f"#SBATCH --output={done['run_dir']}/stdout.log" in script
    # The hostile name added no #SBATCH line and ran no shell word: it ran on debug, and nothing was touched.
    named = [line for line in script.splitlines() if "solo" in line or "touch" in line]
    assert named == [f"#SBATCH --job-name=cliplab-{run['id']}-e2e_SBATCH_--partition_solo_touch_pwn1_touch_pwn2_"
                     "touch_pwn3"]  # only in the sanitized job name
    assert not list(Path(done["run_dir"]).glob("pwn*"))
    assert done["name"] == HOSTILE_NAME


def test_stop_gives_stopped_with_a_checkpoint_and_resume_goes_through_slurm(live_server_factory, slurm_cluster,
                                                                            tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    run, first_job = training_job(server, steps=200, until_step=3)
    assert server.post(f"/api/runs/{run['id']}/stop").json()["status"] == "stopping"
    stopped = server.wait_status(run["id"], ("stopped", "failed", "finished"), 120)
    assert stopped["status"] == "stopped" and stopped["exit_code"] == 0, (
        stopped["reason"], server.get(f"/api/runs/{run['id']}/logs").json()["lines"][-30:])
    latest = [c for c in server.get(f"/api/runs/{run['id']}/checkpoints").json() if "latest" in c["kind"]]
    assert latest and latest[0]["step"] == stopped["step"] >= 3
    assert squeue(slurm_cluster, first_job) in ("COMPLETED", "")  # the job ended by itself, after the checkpoint
    lines = server.get(f"/api/runs/{run['id']}/logs").json()["lines"]
    assert any(f"scancel --signal=URG {first_job}" in line for line in lines)

    stop_step = stopped["step"]
    resumed = server.post(f"/api/runs/{run['id']}/resume", json={"overrides": {"train.steps": stop_step + 2}})
    assert resumed.status_code == 200 and resumed.json()["slurm_job_id"] is None, resumed.text
    second_job = wait_job(server, run["id"])["slurm_job_id"]
    assert second_job != first_job
    done = server.wait_status(run["id"], ("finished", "failed", "stopped"), 180)
    assert done["status"] == "finished" and done["step"] == stop_step + 2 and done["slurm_job_id"] == second_job
    events = file_events(done)
    restart = max(i for i, e in enumerate(events) if e["kind"] == "status" and e["status"] == "starting")
    assert [e["step"] for e in events[restart:] if e["kind"] == "metric"][0] == stop_step + 1
    assert "--resume latest" in (Path(done["run_dir"]) / "slurm-job.sh").read_text()
    assert_database_matches_events_file(server, done)


def test_a_run_waiting_for_resources_is_queued_with_slurms_reason(live_server_factory, slurm_cluster, tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    blocker = subprocess.run(["sbatch", "--parsable", "-p", "solo", f"--output={tmp_path}/blocker.out", "--wrap",
                              "sleep 300"], env=slurm_cluster.client_env(), capture_output=True, text=True, timeout=30)
    blocker_id = blocker.stdout.strip()
    assert blocker.returncode == 0 and blocker_id.isdigit(), blocker.stderr
    try:
        run = create(server, steps=2, slurm={"partition": "solo"})
        queued = wait_until(lambda: (lambda r: r if r["reason"] and "Resources" in r["reason"] else None)(
            server.run(run["id"])), 60, 0.3, "the run to show SLURM's pending reason")
        assert queued["status"] == "queued" and queued["slurm_job_id"] and queued["started_at"] is None
        assert squeue(slurm_cluster, queued["slurm_job_id"]) == "PENDING"
        listed = server.get("/api/runs", params={"status": "queued"}).json()["items"]
        assert [r["id"] for r in listed] == [run["id"]]
        # A second one, stopped while SLURM holds it: its job is cancelled and it ends stopped.
        other = create(server, steps=2, slurm={"partition": "solo"})
        other_job = wait_job(server, other["id"])["slurm_job_id"]
        assert server.post(f"/api/runs/{other['id']}/stop").json()["status"] == "stopping"
        ended = server.wait_status(other["id"], ("stopped", "failed", "finished"), 60)
        assert ended["status"] == "stopped" and ended["step"] == 0 and squeue(slurm_cluster, other_job) == "CANCELLED"
    finally:
        subprocess.run(["scancel", blocker_id], env=slurm_cluster.client_env(), timeout=30)
    done = server.wait_status(run["id"], ("finished", "failed", "stopped"), 180)  # it starts once n1 is free
    assert done["status"] == "finished" and done["slurm_nodelist"] == "n1" and done["reason"] is None, done


def test_a_job_killed_with_scancel_signal_kill_ends_failed(live_server_factory, slurm_cluster, tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    run, job_id = training_job(server, steps=200, until_step=2)
    subprocess.run(["scancel", "--signal=KILL", job_id], env=slurm_cluster.client_env(), check=True, timeout=30)
    done = server.wait_status(run["id"], ("failed", "stopped", "finished"), 120)
    assert done["status"] == "failed" and job_id in done["reason"] and "scancel" in done["reason"], done



def test_a_node_failure_ends_the_run_failed_with_slurms_word_instead_of_requeueing_it(live_server_factory,
                                                                                     slurm_cluster, tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    run, job_id = training_job(server, steps=400, until_step=2)
    node = server.run(run["id"])["slurm_nodelist"]
    scontrol = ["scontrol", "update", f"nodename={node}"]
    subprocess.run([*scontrol, "state=down", "reason=cliplab-test"], env=slurm_cluster.client_env(), check=True,
                   timeout=30)
    try:  # requeued, the job would wait to rerun the script from step 0 while the run showed `running`
        done = server.wait_status(run["id"], ("failed", "stopped", "finished"), 90)
    finally:
        subprocess.run([*scontrol, "state=resume"], env=slurm_cluster.client_env(), timeout=30)
        slurm_cluster.wait_idle(60)
    assert done["status"] == "failed" and "NODE_FAIL" in done["reason"] and job_id in done["reason"], done

def test_a_restarted_server_reattaches_the_job_by_id_and_loses_no_event(live_server_factory, slurm_cluster,
                                                                        tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    run, job_id = training_job(server, steps=30, until_step=2)
    server.kill()  # a crash: no shutdown code runs; the job trains on in SLURM
    time.sleep(3)
    still_running = squeue(slurm_cluster, job_id) == "RUNNING"
    server.start()
    again = server.run(run["id"])
    assert again["slurm_job_id"] == job_id
    if still_running:
        assert again["status"] == "running" and f"re-adopted: job {job_id}" in server.log(), again
    done = server.wait_status(run["id"], ("finished", "failed", "stopped"), 240)
    assert done["status"] == "finished" and done["step"] == 30, done
    assert_database_matches_events_file(server, done)


def _losses(run: dict[str, Any]) -> dict[int, float]:
    return {e["step"]: e["values"]["loss"] for e in file_events(run) if e["kind"] == "metric"}


def test_a_two_node_run_matches_the_one_process_run_with_the_same_global_batch(live_server_factory, slurm_cluster,
                                                                               tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    config = tiny_config(steps=3)
    config["data"]["train_crop_scale"] = [0.8, 1.0]  # augmentation is seeded per sample, not per rank
    config["eval"]["every"] = 1000
    two = server.post("/api/runs", json={"config": {**config, "train": {**config["train"], "batch_size": 4}},
                                         "slurm": {"nodes": 2}}).json()
    one = server.post("/api/runs", json={"config": config, "slurm": {"nodes": 1}}).json()
    assert two["nproc"] == 2 and one["nproc"] == 1
    done_two = server.wait_status(two["id"], ("finished", "failed", "stopped"), 300)
    done_one = server.wait_status(one["id"], ("finished", "failed", "stopped"), 300)
    assert done_two["status"] == "finished", server.get(f"/api/runs/{two['id']}/logs").json()["lines"][-40:]
    assert done_one["status"] == "finished", done_one
    assert done_two["slurm_nodelist"] == "n[1-2]"
    script = (Path(done_two["run_dir"]) / "slurm-job.sh").read_text()
    assert '--nnodes "$SLURM_NNODES"' in script and "--rdzv_backend c10d" in script
    logs = "".join(e.get("message", "") for e in file_events(done_two) if e["kind"] == "log")
    assert "world size 2; global batch 8" in logs
    losses_two, losses_one = _losses(done_two), _losses(done_one)
    assert sorted(losses_two) == sorted(losses_one) == [1, 2, 3]
    for step, loss in losses_one.items():
        assert abs(losses_two[step] - loss) < 1e-4, (step, losses_two[step], loss)
