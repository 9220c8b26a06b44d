"""The local executor: the trainer as a subprocess of this server's machine (today's behaviour).

Trainers run in their own session/process group (so a stop reaches torchrun's workers too, and Ctrl-C on
the server does not kill them); a restarted server re-adopts the ones still alive by pid. GPUs are handed
out by the launcher's queue and reach the trainer as CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from backend.models import Run
from backend.services.executors.base import Executor, JobState, TrainerJob, append_log, resume_dir
from contract.run_dir import STDOUT_LOG


def trainer_command(cfg_path: Path, run_dir: Path, nproc: int, resume: bool,
                    resume_from: Path | None = None) -> list[str]:
    """The argument list (never a shell string) that runs `cliplab train` for a run; a resume continues from
    `resume_from` (a step directory), else from `latest`."""
    args = ["-m", "trainer", "train", str(cfg_path), "--run-dir", str(run_dir)]
    if resume:
        args += ["--resume", str(resume_from) if resume_from else "latest"]
    if nproc > 1:
        # torchrun as a module: no PATH lookup, and the same interpreter as the server.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                *args]
    return [sys.executable, *args]


def pid_alive(pid: int) -> bool:
    """True for a running process (a zombie, i.e. exited but not reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def pid_is_trainer(pid: int, run_dir: str) -> bool:
    """Is `pid` alive and our trainer for `run_dir` (not an unrelated process that reused the pid)?"""
    if not pid_alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    text = [a.decode(errors="replace") for a in args]
    return "trainer" in text and run_dir in text


def send_signal(pid: int, sig: int, whole_group: bool = False) -> bool:
    """Signal the process the launcher started; False when it is gone (or not ours to signal).

    A stop goes to that process alone: the trainer saves a checkpoint and ends its own data-loader workers
    (which run in their own session), and torchrun forwards the signal to its workers. `whole_group` reaches
    every process of the group `pid` leads (the trainer, its loader workers, torchrun's workers): for a kill.
    """
    try:
        (os.killpg if whole_group else os.kill)(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def kill_stragglers(pgid: int, run_dir: str) -> int:
    """SIGKILL what is left of a finished run's process group (torchrun workers orphaned by a killed torchrun,
    say). Only processes in that group whose command line names the run dir: the pid may be reused."""
    killed = 0
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            if run_dir.encode() not in (entry / "cmdline").read_bytes():
                continue
            os.kill(int(entry.name), signal.SIGKILL)
            killed += 1
        except (OSError, ValueError, IndexError):
            continue
    return killed


class LocalExecutor(Executor):
    name = "local"

    def __init__(self) -> None:
        self._procs: dict[str, subprocess.Popen] = {}  # runs we started
        self._adopted: dict[str, int] = {}  # runs a previous server started: pid, not our child
        self._lock = threading.RLock()

    def submit(self, job: TrainerJob) -> dict[str, Any]:
        run = job.run
        cmd = trainer_command(job.config_path, job.run_dir, run.nproc, run.resume, resume_dir(run, job.run_dir))
        append_log(job.run_dir, "launch: " + " ".join(shlex.quote(c) for c in cmd)
                   + f"  (CUDA_VISIBLE_DEVICES={job.env['CUDA_VISIBLE_DEVICES']!r})")
        with (job.run_dir / STDOUT_LOG).open("ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=job.run_dir, env=job.env, start_new_session=True, close_fds=True)
        with self._lock:
            self._procs[run.id] = proc
        return {"pid": proc.pid}

    def adopt(self, run_id: str, pid: int) -> None:
        """Watch a live trainer this server did not start (its pid leads its process group)."""
        with self._lock:
            self._adopted[run_id] = pid

    def reattach(self, run: Run) -> bool:
        if run.pid and pid_is_trainer(run.pid, run.run_dir):
            self.adopt(run.id, run.pid)
            return True
        if run.pid and kill_stragglers(run.pid, run.run_dir):  # e.g. torchrun's workers outliving it
            append_log(Path(run.run_dir), f"killed processes left in process group {run.pid}")
        return False

    def tracked_pid(self, run_id: str) -> int | None:
        with self._lock:
            proc = self._procs.get(run_id)
            return proc.pid if proc is not None else self._adopted.get(run_id)

    def poll(self, runs: list[Run]) -> dict[str, JobState]:
        states = {}
        for run in runs:
            with self._lock:
                proc, pid = self._procs.get(run.id), self._adopted.get(run.id)
            if proc is not None:
                code = proc.poll()
                states[run.id] = JobState("running") if code is None else self._ended(run, code)
            elif pid is not None:
                states[run.id] = JobState("running") if pid_alive(pid) else self._ended(run, None)
        return states

    def _ended(self, run: Run, code: int | None) -> JobState:
        self.forget(run.id)
        if run.pid and kill_stragglers(run.pid, run.run_dir):
            append_log(Path(run.run_dir), f"killed processes left in process group {run.pid}")
        return JobState("ended", exit_code=code)

    def alive(self, run: Run) -> bool:
        pid = self.tracked_pid(run.id)
        return pid is not None and pid_alive(pid)

    def request_stop(self, run: Run) -> str:
        pid = self.tracked_pid(run.id)
        if pid is None:
            return ""
        send_signal(pid, signal.SIGTERM)
        return f"stop requested: SIGTERM to pid {pid}"

    def kill(self, run: Run) -> None:
        pid = self.tracked_pid(run.id)
        if pid is not None and pid_alive(pid):
            send_signal(pid, signal.SIGKILL, whole_group=True)

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._procs.pop(run_id, None)
            self._adopted.pop(run_id, None)
