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
from backend_fixtures import wait_until
from test_backend_integration import assert_database_matches_events_file, file_events, tiny_config, wait_step

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


def test_a_slurm_run_trains_to_finished_with_its_job_id_charts_and_matrix(live_server_factory, slurm_cluster,
                                                                          tmp_path):
    server = slurm_server(live_server_factory, slurm_cluster, tmp_path)
    run = create(server, steps=6, name="slurm e2e")
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
