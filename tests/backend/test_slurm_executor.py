"""The SLURM executor without a cluster: settings sources, run requests (422s), the batch script's text, and
how a job's end becomes a run's final state."""

from __future__ import annotations

import shlex

import pytest
from pydantic import ValidationError

from backend.models import Run
from backend.services.executors import JobState
from backend.services.executors.slurm import STOP_RELAY, batch_script, slurm_exit_code
from backend.services.launcher import job_final_state
from backend.settings import Settings
from backend.slurm_settings import SlurmSettings
from contract.events import STOP_REQUESTED_REASON

SLURM = {"partition": "gpu", "partitions": ["gpu", "debug"], "max_nodes": 4, "max_gpus_per_node": 8,
         "cpus_per_task": 6, "time_limit": "12:00:00"}


def test_settings_come_from_flags_over_environment_over_the_config_file(tmp_path, monkeypatch):
    path = tmp_path / "cliplab.toml"
    path.write_text('executors = ["slurm", "local"]\nport = 9000\n[slurm]\npartition = "gpu"\nmax_nodes = 4\n'
                    'extra_sbatch = ["#SBATCH --mem=64G", "--constraint=a100"]\n[slurm.env]\nSLURM_CONF = "/etc/x"\n')
    monkeypatch.setenv("CLIPLAB_CONFIG_FILE", str(path))
    monkeypatch.setenv("CLIPLAB_SLURM__MAX_NODES", "8")
    settings = Settings(port=9100)
    assert settings.executors == ["slurm", "local"] and settings.default_executor == "slurm"
    assert settings.port == 9100 and settings.slurm.max_nodes == 8 and settings.slurm.partition == "gpu"
    assert settings.slurm.extra_sbatch == ["--mem=64G", "--constraint=a100"]
    assert settings.slurm.env == {"SLURM_CONF": "/etc/x"}
    monkeypatch.setenv("CLIPLAB_EXECUTORS", "local")
    assert Settings().executors == ["local"]
    yaml_file = tmp_path / "cliplab.yaml"
    yaml_file.write_text("slurm:\n  partitions: [a, b]\n")
    assert Settings(config_file=yaml_file).slurm.partitions == ["a", "b"]


@pytest.mark.parametrize("bad, field", [
    ({"extra_sbatch": ["--mem=1G\n#SBATCH --partition=x"]}, "extra_sbatch"),
    ({"extra_sbatch": ["--wrap=rm -rf ~"]}, "extra_sbatch"),
    ({"run_root": "/shared/my runs"}, "run_root"),
    ({"partition": "gpu;id"}, "partition"),
    ({"time_limit": "soon"}, "time_limit"),
])
def test_admin_settings_that_would_break_the_batch_script_are_refused(bad, field):
    with pytest.raises(ValidationError) as err:
        SlurmSettings(**bad)
    assert field in str(err.value)


def test_unknown_executors_are_refused_by_name():
    with pytest.raises(ValidationError, match="unknown executor 'kubernetes'"):
        Settings(executors=["kubernetes"])


@pytest.fixture
def slurm_app(app_server_factory):
    return app_server_factory(executors=["slurm", "local"], slurm=SLURM)


@pytest.mark.parametrize("body, field, words", [
    ({"slurm": {"partition": "nope"}}, "slurm.partition", "unknown partition 'nope'; allowed: one of gpu, debug"),
    ({"slurm": {"nodes": 5}}, "slurm.nodes", "at most 4"),
    ({"slurm": {"gpus_per_node": 9}}, "slurm.gpus_per_node", "at most 8"),
    ({"slurm": {"time_limit": "1 day"}}, "slurm.time_limit", "SLURM time limit"),
    ({"slurm": {"qos": "high\n#SBATCH --x"}}, "slurm.qos", "not a SLURM name"),
    ({"slurm": {"partition": "gpu", "extra": 1}}, "slurm.extra", ""),
    ({"executor": "kubernetes"}, "executor", "runs slurm, local"),
    ({"executor": "local", "slurm": {"nodes": 1}}, "slurm", "only for runs with executor slurm"),
    ({"gpus": 2}, "gpus", "slurm.gpus_per_node"),
])
def test_slurm_run_requests_are_refused_with_a_422_naming_the_field(slurm_app, body, field, words):
    r = slurm_app.client.post("/api/runs", json={"config": {}, **body})
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["field"] == field and words in e["message"] for e in errors), errors
    assert slurm_app.client.get("/api/runs").json()["total"] == 0


def test_a_slurm_run_gets_the_servers_defaults_and_a_local_run_stays_local(slurm_app):
    # no SLURM here: the launcher's sbatch fails, which the run records; the request itself is what is tested
    run = slurm_app.client.post("/api/runs", json={"config": {}, "slurm": {"nodes": 2, "gpus_per_node": 4}}).json()
    assert run["executor"] == "slurm" and run["gpus"] == 8 and run["nproc"] == 8
    assert run["slurm"] == {"partition": "gpu", "nodes": 2, "gpus_per_node": 4, "cpus_per_task": 6,
                            "time_limit": "12:00:00", "qos": None}
    local = slurm_app.client.post("/api/runs", json={"config": {}, "executor": "local"}).json()
    assert local["executor"] == "local" and local["slurm"] == {} and local["slurm_job_id"] is None
    system = slurm_app.client.get("/api/system").json()["executors"]
    assert system["enabled"] == ["slurm", "local"] and system["details"]["slurm"]["max_nodes"] == 4


def _run(name: str, **slurm) -> Run:
    request = {"partition": "gpu", "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 2, "time_limit": None,
               "qos": None, **slurm}
    return Run(id="r-20261201-abcdef", name=name, created_at=0.0, slurm=request)


def _srun(script: str) -> list[str]:
    """The words of the script's srun command (the relay inside it spans lines)."""
    return shlex.split(script[script.index("\nsrun ") + 1:])


def _directives(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_the_batch_script_asks_for_the_requested_resources_and_runs_torchrun_across_nodes(tmp_path):
    cfg = SlurmSettings(account="proj1", extra_sbatch=["--mem=64G"], python="/opt/venv/bin/python")
    run = _run("clip", nodes=2, gpus_per_node=4, time_limit="2-00:00:00", qos="high")
    script = batch_script(run, run.slurm, cfg, tmp_path, tmp_path / "config.yaml", stop_grace_s=120)
    assert _directives(script) == [
        "#SBATCH --job-name=cliplab-r-20261201-abcdef-clip", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1",
        "#SBATCH --cpus-per-task=2", "#SBATCH --signal=URG@120", "#SBATCH --gpus-per-node=4",
        "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj1", "#SBATCH --qos=high",
        f"#SBATCH --output={tmp_path}/stdout.log", "#SBATCH --open-mode=append", f"#SBATCH --chdir={tmp_path}",
        "#SBATCH --no-requeue", "#SBATCH --mem=64G"]
    srun = _srun(script)
    assert srun[:6] == ["srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1", "--cpus-per-task=2", "bash", "-c"]
    assert srun[6] == STOP_RELAY
    assert srun[8:] == ["/opt/venv/bin/python", "-m", "torch.distributed.run", "--nnodes", "$SLURM_NNODES",
                        "--nproc_per_node", "4", "--rdzv_backend", "c10d", "--rdzv_endpoint", "$HEAD_ADDR:$RDZV_PORT",
                        "--rdzv_id", "$SLURM_JOB_ID", "-m", "trainer", "train", str(tmp_path / "config.yaml"),
                        "--run-dir", str(tmp_path)]
    one = batch_script(_run("one"), _run("one").slurm, cfg, tmp_path, tmp_path / "config.yaml")
    assert _srun(one)[8:11] == ["/opt/venv/bin/python", "-m", "trainer"]  # no torchrun


@pytest.mark.parametrize("name", ["x\n#SBATCH --partition=admin", "$(id) `id` ; rm -rf ~ #", "a\r\nb'\"\\"])
def test_a_hostile_run_name_adds_no_sbatch_line_and_no_shell_word(tmp_path, name):
    run = _run(name)
    script = batch_script(run, run.slurm, SlurmSettings(), tmp_path, tmp_path / "config.yaml")
    plain = batch_script(_run("x"), _run("x").slurm, SlurmSettings(), tmp_path, tmp_path / "config.yaml")
    assert len(script.splitlines()) == len(plain.splitlines())
    assert [d for d in _directives(script) if not d.startswith("#SBATCH --job-name=")] == \
        [d for d in _directives(plain) if not d.startswith("#SBATCH --job-name=")]
    job_name = _directives(script)[0].removeprefix("#SBATCH --job-name=")
    assert all(c.isalnum() or c in "_.-" for c in job_name)
    assert _srun(script) == _srun(plain)


def test_slurm_exit_codes_read_as_exit_code_or_minus_the_signal():
    assert slurm_exit_code("0:0") == 0 and slurm_exit_code("1:0") == 1
    assert slurm_exit_code("0:15") == -15 and slurm_exit_code("0:9") == -9
    assert slurm_exit_code("x") is None


def test_a_job_the_scheduler_ended_fails_with_its_word_unless_the_dashboard_stopped_it():
    cancelled = JobState("ended", exit_code=0, ended_by="SLURM job 7 was cancelled in SLURM (scancel)")
    # the trainer caught the SIGTERM SLURM sends on a cancel and reported `stopped`: still a failure
    assert job_final_state(cancelled, "stopped", "SIGTERM", stop_requested=False) == (
        "failed", "SLURM job 7 was cancelled in SLURM (scancel)")
    assert job_final_state(cancelled, "failed", "worker died", False) == (
        "failed", "SLURM job 7 was cancelled in SLURM (scancel) (worker died)")
    assert job_final_state(cancelled, "stopped", "SIGTERM", stop_requested=True) == ("stopped", STOP_REQUESTED_REASON)
    assert job_final_state(cancelled, "finished", None, False) == ("finished", None)  # it was done anyway
    timeout = JobState("ended", exit_code=0, ended_by="SLURM job 8 reached its time limit", timed_out=True)
    status, reason = job_final_state(timeout, "stopped", "SIGTERM", False)
    assert status == "stopped" and "time limit" in reason and "resume" in reason
    assert job_final_state(timeout, "running", None, False)[0] == "failed"
    # jobs that ended by themselves follow the local exit-code rules
    assert job_final_state(JobState("ended", exit_code=0), "finished", None, False) == ("finished", None)
    assert job_final_state(JobState("ended", exit_code=1), "failed", "bad data", False) == ("failed", "bad data")
    assert job_final_state(JobState("ended", exit_code=-9), "running", None, True)[0] == "stopped"


def test_a_relative_pretrained_path_is_checked_from_the_slurm_run_root_the_trainer_runs_in(app_server_factory,
                                                                                             tmp_path):
    # slurm.run_root lies outside the data dir: a SLURM trainer runs (--chdir) in <run_root>/<id>
    shared = tmp_path / "cluster"
    (shared / "models").mkdir(parents=True)
    server = app_server_factory(executors=["slurm", "local"], readable_dirs=[shared / "models"],
                                slurm={**SLURM, "run_root": str(shared / "runs")})
    escaping = {"model": {"pretrained": "../../x/weights.pt"}}  # <data_dir>/x for a local run, <shared>/x here

    def refused(r) -> None:
        assert r.status_code == 422, r.text
        assert [e["field"] for e in r.json()["detail"]] == ["model.pretrained"]
        assert "outside the folders this server may read" in r.json()["detail"][0]["message"]

    refused(server.client.post("/api/runs", json={"config": escaping}))
    local = server.client.post("/api/runs", json={"config": escaping, "executor": "local"})
    assert local.status_code == 201, local.text
    run = server.client.post("/api/runs", json={"config": {"model": {"pretrained": "../../models/w.pt"}}})
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    assert run.json()["run_dir"] == str(shared / "runs" / run_id)
    overrides = {"model.pretrained": "../../x/weights.pt"}
    refused(server.client.post(f"/api/runs/{run_id}/clone", json={"overrides": overrides}))

    def ended_with_a_checkpoint(session) -> None:
        row = session.get(Run, run_id)
        row.status = "failed"
        session.add(row)

    server.services.writer.call(ended_with_a_checkpoint)
    latest = shared / "runs" / run_id / "checkpoints" / "latest"
    (latest.parent / "step_000001").mkdir(parents=True, exist_ok=True)
    latest.write_text("step_000001")
    refused(server.client.post(f"/api/runs/{run_id}/resume", json={"overrides": overrides}))
    assert server.client.get("/api/runs").json()["total"] == 2
