"""The SLURM executor: each run attempt is a batch job, driven through SLURM's own command-line tools.

- submit: write <run_dir>/slurm-job.sh (see `batch_script`) and `sbatch --parsable` it;
- poll: `squeue` for live jobs (PENDING with SLURM's reason, RUNNING with the node list); a job squeue no
  longer lists, or lists as ended, is looked up with `sacct` and, where accounting storage is off,
  `sacct -c` (the job completion log) for its final state and exit code;
- stop: `scancel --signal=URG JOB` reaches every process of the job steps but not the batch shell; a relay
  around the trainer turns it into a SIGTERM for the trainer alone (it saves a checkpoint and exits 0: a
  SIGTERM to the whole step would kill its data-loader workers too). The same happens before the time
  limit (`#SBATCH --signal`). After the launcher's grace period `scancel JOB` ends the job;
- re-attach after a server restart: the job id stored on the run is all it needs.

Every tool is called with an argument list. Values written into the script come from validated settings
and requests (backend/slurm_settings.py) or are quoted; the run's name only appears sanitized in the job name.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from backend.models import Run
from backend.services.executors.base import Executor, ExecutorError, JobState, TrainerJob, append_log, resume_dir
from backend.slurm_settings import SlurmSettings

LIVE = {"PENDING": "pending", "CONFIGURING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending",
        "RESV_DEL_HOLD": "pending", "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running",
        "STOPPED": "running", "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running"}
SQUEUE_FORMAT = "%i|%T|%r|%P|%N"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Partition"
SCRIPT_NAME = "slurm-job.sh"
STOP_SIGNAL = "URG"
# Runs the trainer on each node and turns SIGURG into a SIGTERM for the trainer (or torchrun) alone. SLURM
# signals every process of a job step, and a SIGTERM would also kill the trainer's data-loader workers and
# fail the run; every process but this relay ignores SIGURG by default.
STOP_RELAY = ('"$@" & child=$!\n'
              f"trap 'kill -TERM \"$child\" 2>/dev/null' {STOP_SIGNAL}\n"
              'while :; do wait "$child"; code=$?; kill -0 "$child" 2>/dev/null || exit "$code"; done')
_UNSAFE_JOB_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


def job_name(run: Run) -> str:
    """`cliplab-<run id>-<name>` with every character SLURM or a shell could read as syntax replaced."""
    return ("cliplab-" + run.id + "-" + _UNSAFE_JOB_NAME.sub("_", run.name).strip("_"))[:100].rstrip("-")


def sbatch_options(run: Run, request: dict[str, Any], cfg: SlurmSettings, run_dir: Path,
                   stop_grace_s: float) -> list[str]:
    """The #SBATCH options of a run (values already validated by the run request and the settings)."""
    options = [f"--job-name={job_name(run)}", f"--nodes={int(request['nodes'])}", "--ntasks-per-node=1",
               f"--cpus-per-task={int(request['cpus_per_task'])}",
               # Before the time limit, the same stop as the dashboard's: the trainer saves a checkpoint.
               f"--signal={STOP_SIGNAL}@{max(60, int(stop_grace_s))}"]
    if int(request["gpus_per_node"]) > 0:
        options.append(f"--gpus-per-node={int(request['gpus_per_node'])}")
    named = {"time": request.get("time_limit"), "partition": request.get("partition"), "account": cfg.account,
             "qos": request.get("qos")}
    options += [f"--{key}={value}" for key, value in named.items() if value]
    options += [f"--output={run_dir / 'stdout.log'}", "--open-mode=append", f"--chdir={run_dir}",
                # A job SLURM requeues (node failure, preemption) would rerun this script from step 0 while the
                # run shows `running`; ended, the run fails with SLURM's word and Resume continues it.
                "--no-requeue"]
    return options + list(cfg.extra_sbatch)


def trainer_argv(python: str, request: dict[str, Any], cfg_path: Path, run_dir: Path, resume: bool,
                 resume_from: Path | None = None) -> list[str]:
    """What srun starts on every node: torchrun for several processes, else the trainer itself; a resume
    continues from `resume_from` (a step directory), else from `latest`."""
    train = ["-m", "trainer", "train", str(cfg_path), "--run-dir", str(run_dir)] + (
        ["--resume", str(resume_from) if resume_from else "latest"] if resume else [])
    nodes, gpus = int(request["nodes"]), int(request["gpus_per_node"])
    if nodes == 1 and gpus <= 1:
        return [python, *train]
    return [python, "-m", "torch.distributed.run", "--nnodes", "$SLURM_NNODES", "--nproc_per_node",
            str(max(gpus, 1)), "--rdzv_backend", "c10d", "--rdzv_endpoint", "$HEAD_ADDR:$RDZV_PORT",
            "--rdzv_id", "$SLURM_JOB_ID", *train]


def _shell_word(arg: str) -> str:
    """A quoted word, except the script's own variables, which must expand on the node."""
    return f'"{arg}"' if arg.startswith("$") else shlex.quote(arg)


def batch_script(run: Run, request: dict[str, Any], cfg: SlurmSettings, run_dir: Path, cfg_path: Path,
                 stop_grace_s: float = 30) -> str:
    """The batch script of one attempt of a run."""
    lines = ["#!/bin/bash", f"# cliplab run {run.id}: written by the cliplab server, submitted with sbatch"]
    lines += [f"#SBATCH {option}" for option in sbatch_options(run, request, cfg, run_dir, stop_grace_s)]
    argv = trainer_argv(cfg.python, request, cfg_path, run_dir, run.resume, resume_dir(run, run_dir))
    lines += [
        "set -eu",
        "# torchrun's rendezvous: the first node of the allocation, by the address SLURM knows it at.",
        'NODES=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))',
        'HEAD_ADDR=$(scontrol show node "${NODES[0]}" -o | sed -n \'s/.* NodeAddr=\\([^ ]*\\).*/\\1/p\')',
        'HEAD_ADDR=${HEAD_ADDR:-${NODES[0]}}',
        f"RDZV_PORT=$(( {cfg.rdzv_port} + SLURM_JOB_ID % 1000 ))",
        'echo "[cliplab] SLURM job $SLURM_JOB_ID on $SLURM_JOB_NODELIST (rendezvous $HEAD_ADDR:$RDZV_PORT)"',
        f"# A stop is `scancel --signal={STOP_SIGNAL} $SLURM_JOB_ID`: the relay passes it on as SIGTERM.",
        # srun no longer inherits --cpus-per-task from sbatch (SLURM 22.05): say it, or the step gets one CPU.
        f"srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task={int(request['cpus_per_task'])} "
        f"bash -c {shlex.quote(STOP_RELAY)} cliplab-stop-relay "
        + " ".join(_shell_word(a) for a in argv),
        "",
    ]
    return "\n".join(lines)


def slurm_exit_code(text: str) -> int | None:
    """SLURM's `code:signal` as one number: the exit code, or minus the signal that ended it."""
    code, _, sig = text.partition(":")
    try:
        return -int(sig) if sig and int(sig) else int(code)
    except ValueError:
        return None


class SlurmExecutor(Executor):
    name = "slurm"

    def __init__(self, cfg: SlurmSettings, stop_grace_s: float = 30):
        self.cfg = cfg
        self.stop_grace_s = stop_grace_s
        self._states: dict[str, JobState] = {}  # by job id, from the last poll
        self._polled_at = 0.0
        self._lock = threading.Lock()

    # -- the tools --

    def tool_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return {**(os.environ if base is None else base), **self.cfg.env}

    def run_tool(self, args: list[str], env: dict[str, str] | None = None, check: bool = True,
                 timeout: float = 30) -> subprocess.CompletedProcess:
        exe = str(self.cfg.bin_dir / args[0]) if self.cfg.bin_dir else args[0]
        try:
            out = subprocess.run([exe, *args[1:]], env=env or self.tool_env(), capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExecutorError(f"{args[0]} could not run: {exc}") from None
        if check and out.returncode != 0:
            raise ExecutorError(f"{' '.join(args[:2])} failed (exit {out.returncode}): "
                                f"{(out.stderr or out.stdout).strip()[:500]}")
        return out

    # -- submit --

    def submit(self, job: TrainerJob) -> dict[str, Any]:
        request = job.run.slurm
        script = job.run_dir / SCRIPT_NAME
        script.write_text(batch_script(job.run, request, self.cfg, job.run_dir, job.config_path, self.stop_grace_s))
        env = {k: v for k, v in job.env.items() if k != "CUDA_VISIBLE_DEVICES" and not k.startswith("SLURM_")}
        if "SLURM_CONF" in os.environ:
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]
        args = ["sbatch", "--parsable", "--export=ALL", str(script)]
        out = self.run_tool(args, env=self.tool_env(env)).stdout.strip()
        job_id = out.split(";")[0]
        if not job_id.isdigit():
            raise ExecutorError(f"sbatch answered {out!r}, not a job id")
        append_log(job.run_dir, f"submitted SLURM job {job_id}: {shlex.join(args)}")
        with self._lock:
            self._polled_at = 0.0  # the next poll asks squeue where the new job is
        return {"slurm_job_id": job_id, "slurm_partition": request.get("partition"), "slurm_nodelist": None,
                "pid": None}

    # -- state --

    def poll(self, runs: list[Run]) -> dict[str, JobState]:
        ids = [r.slurm_job_id for r in runs if r.slurm_job_id]
        with self._lock:
            fresh = time.monotonic() - self._polled_at < self.cfg.poll_s and all(i in self._states for i in ids)
        if ids and not fresh:
            states = self._query(ids)
            with self._lock:
                self._states = states  # only the jobs still watched: ended runs' jobs are dropped
                self._polled_at = time.monotonic()
        with self._lock:
            return {r.id: self._states[r.slurm_job_id] for r in runs
                    if r.slurm_job_id and r.slurm_job_id in self._states}

    def _query(self, ids: list[str]) -> dict[str, JobState]:
        states: dict[str, JobState] = {}
        listed = self._squeue(ids)
        for job_id in ids:
            row = listed.get(job_id)
            if row is not None and row[1] in LIVE:
                states[job_id] = self._live_state(row)
        ended = [i for i in ids if i not in states]
        if ended:
            accounted = self._sacct(ended)
            for job_id in ended:
                row = accounted.get(job_id) or listed.get(job_id)
                states[job_id] = self._ended_state(job_id, row)
        return states

    def _squeue(self, ids: list[str]) -> dict[str, list[str]]:
        out = self.run_tool(["squeue", "--noheader", "--states=all", "--jobs=" + ",".join(ids),
                             "--format=" + SQUEUE_FORMAT], check=False)
        if out.returncode != 0 and "Invalid job id" not in out.stderr:
            raise ExecutorError(f"squeue failed (exit {out.returncode}): {out.stderr.strip()[:500]}")
        rows = [line.split("|") for line in out.stdout.splitlines()]
        return {row[0]: row for row in rows if len(row) == 5}

    def _sacct(self, ids: list[str]) -> dict[str, list[str]]:
        """Final states from accounting, or from the job completion log (`sacct -c`) where it is off."""
        args = ["--noheader", "--parsable2", "--allocations", "--jobs=" + ",".join(ids), "--format=" + SACCT_FIELDS]
        out = self.run_tool(["sacct", *args], check=False)
        if out.returncode != 0 or "accounting storage is disabled" in out.stdout + out.stderr:
            out = self.run_tool(["sacct", "--completion", *args], check=False)
        rows = [line.split("|") for line in out.stdout.splitlines()] if out.returncode == 0 else []
        found: dict[str, list[str]] = {}
        for row in rows:
            if len(row) == 5:
                state = row[1].split()[0] if row[1] else ""  # "CANCELLED by 0"
                found[row[0]] = [row[0], state, row[2], row[4], row[3]]
        return found

    @staticmethod
    def _live_state(row: list[str]) -> JobState:
        _, state, reason, partition, nodes = row
        phase = LIVE[state]
        where: dict[str, Any] = {"slurm_partition": partition or None}
        if nodes and phase == "running":
            where["slurm_nodelist"] = nodes
        why = None
        if phase == "pending":
            why = f"SLURM job pending: {reason}" if reason and reason != "None" else f"SLURM job {state.lower()}"
        return JobState(phase, reason=why, where=where)

    @staticmethod
    def _ended_state(job_id: str, row: list[str] | None) -> JobState:
        if row is None:
            return JobState("ended", ended_by=f"SLURM no longer knows job {job_id}")
        state, code = row[1], row[2]
        exit_code = slurm_exit_code(code) if ":" in code else None
        where = {k: v for k, v in (("slurm_partition", row[3]), ("slurm_nodelist", row[4])) if v and v != "None"}
        if state == "COMPLETED":
            return JobState("ended", exit_code=0 if exit_code is None else exit_code, where=where)
        if state == "FAILED":
            return JobState("ended", exit_code=exit_code, where=where)
        if state == "TIMEOUT":
            return JobState("ended", exit_code=exit_code, ended_by=f"SLURM job {job_id} reached its time limit",
                            timed_out=True, where=where)
        verb = "was cancelled in SLURM (scancel)" if state == "CANCELLED" else f"ended {state}"
        return JobState("ended", exit_code=exit_code, ended_by=f"SLURM job {job_id} {verb}", where=where)

    def alive(self, run: Run) -> bool:
        with self._lock:
            state = self._states.get(run.slurm_job_id or "")
        return state is not None and state.phase == "running"

    def reattach(self, run: Run) -> bool:
        if not run.slurm_job_id:
            return False
        with self._lock:
            self._polled_at = 0.0  # ask SLURM now
        return run.id in self.poll([run])  # known, even as ended: the next tick finalizes it with SLURM's word

    # -- stop --

    def request_stop(self, run: Run) -> str:
        if not run.slurm_job_id:
            return ""
        with self._lock:
            state = self._states.get(run.slurm_job_id)
        if state is None:
            state = self._query([run.slurm_job_id])[run.slurm_job_id]
        if state.phase == "pending":
            self.run_tool(["scancel", run.slurm_job_id])
            return f"stop requested: scancel {run.slurm_job_id} (the job had not started)"
        # Not --full: the batch shell must live on to report the trainer's exit code.
        self.run_tool(["scancel", f"--signal={STOP_SIGNAL}", run.slurm_job_id])
        return (f"stop requested: scancel --signal={STOP_SIGNAL} {run.slurm_job_id} (the job's relay sends "
                "SIGTERM to the trainer)")

    def kill(self, run: Run) -> None:
        if run.slurm_job_id:
            self.run_tool(["scancel", run.slurm_job_id])

    def forget(self, run_id: str) -> None:
        pass  # states are kept by job id; a resumed run gets a new job

    # -- what the cluster has --

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "default_partition": self.cfg.partition,
                                "allowed_partitions": self.cfg.allowed_partitions(), "max_nodes": self.cfg.max_nodes,
                                "max_gpus_per_node": self.cfg.max_gpus_per_node,
                                "cpus_per_task": self.cfg.cpus_per_task, "time_limit": self.cfg.time_limit}
        try:
            info["partitions"] = self.partitions()
        except ExecutorError as exc:
            info["partitions"], info["error"] = [], str(exc)
        return info

    def partitions(self) -> list[dict[str, Any]]:
        """Partitions as sinfo reports them, with allocated/idle/other/total node counts."""
        out = self.run_tool(["sinfo", "--noheader", "--format=%R|%a|%F|%l"]).stdout
        parts = []
        for line in out.splitlines():
            cells = line.split("|")
            if len(cells) != 4:
                continue
            counts = [int(c) if c.isdigit() else 0 for c in cells[2].split("/")] + [0] * 4
            parts.append({"name": cells[0], "available": cells[1], "allocated": counts[0], "idle": counts[1],
                          "other": counts[2], "total": counts[3], "time_limit": cells[3]})
        return parts
