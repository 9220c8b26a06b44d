"""Starts, queues, watches and stops trainer processes.

One monitor thread ticks every `poll_s`: reap exited processes (final state from the exit code and the
last status event), SIGKILL stops past their grace period, backfill events.jsonl lines the HTTP push missed,
mark silent runs `lost`, and start queued runs whose GPUs (or CPU slot) are free.

Trainers run in their own session/process group (so a stop reaches torchrun's workers too, and Ctrl-C on
the server does not kill them); a restarted server re-adopts the ones still alive.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from sqlmodel import Session, select

from backend.models import ACTIVE_STATUSES, Run
from backend.services import attempts, metrics
from backend.services.ingest import grant_token, valid_file_events
from backend.services.system import query_gpus
from trainer.events import ENV_RUN_ID, ENV_SERVER, ENV_TOKEN

if TYPE_CHECKING:
    from backend.core import Services

log = logging.getLogger("cliplab.launcher")
# Server secrets that a trainer process has no business seeing.
_SCRUBBED_ENV = ("CLIPLAB_TOKEN", "DATABASE_URL", "CLIPLAB_DATABASE_URL")


# ---- pure decisions (unit-tested without processes) ------------------------------------------------------


def plan_launches(queued: list[tuple[str, int]], busy_devices: set[int], gpu_indices: list[int],
                  cpu_active: int, max_cpu_runs: int) -> list[tuple[str, list[int]]]:
    """Which queued runs start now, and on which GPUs.

    `queued` is [(run_id, gpus)] oldest first. First fit: a run whose GPUs are not free waits, and a run
    behind it that fits may start. gpus=0 runs take one of `max_cpu_runs` CPU slots instead.
    """
    free = [i for i in gpu_indices if i not in busy_devices]
    plan = []
    for run_id, gpus in queued:
        if gpus == 0:
            if cpu_active < max_cpu_runs:
                cpu_active += 1
                plan.append((run_id, []))
        elif len(free) >= gpus:
            plan.append((run_id, free[:gpus]))
            free = free[gpus:]
    return plan


def trainer_command(cfg_path: Path, run_dir: Path, nproc: int, resume: bool) -> list[str]:
    """The argument list (never a shell string) that runs `cliplab train` for a run."""
    args = ["-m", "trainer", "train", str(cfg_path), "--run-dir", str(run_dir)]
    if resume:
        args += ["--resume", "latest"]
    if nproc > 1:
        # torchrun as a module: no PATH lookup, and the same interpreter as the server.
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                *args]
    return [sys.executable, *args]


def trainer_env(base: dict[str, str], server_url: str, run_id: str, token: str, data_dir: Path,
                devices: list[int], stop_grace_s: float) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k not in _SCRUBBED_ENV}
    env.update({
        ENV_SERVER: server_url, ENV_RUN_ID: run_id, ENV_TOKEN: token,
        "CLIPLAB_DATA_DIR": str(data_dir),  # `data.train: demo` resolves to the server's data dir
        "CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices),  # "" hides every GPU from a CPU run
        "PYTHONUNBUFFERED": "1",  # stdout.log shows progress as it happens
        # torchrun SIGKILLs its workers 30 s after forwarding a stop by default, which can cut a large model's
        # stop checkpoint short; give them the same grace as the launcher does.
        "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(max(1, int(stop_grace_s))),
    })
    return env


def final_state(exit_code: int | None, trainer_status: str | None, trainer_reason: str | None,
                stop_requested: bool, gone_reason: str | None = None) -> tuple[str, str | None]:
    """(status, reason) of a run whose process ended. exit_code None: not our child, so only events count."""
    if trainer_status == "failed":
        return "failed", trainer_reason or f"the trainer reported a failure (exit code {exit_code})"
    reported = trainer_status in ("finished", "stopped")
    if exit_code is None:
        if reported:
            return trainer_status, trainer_reason  # type: ignore[return-value]
        if stop_requested:
            return "stopped", "stopped without reporting a final status (no checkpoint may have been saved)"
        return "failed", gone_reason or "the trainer process ended without reporting a final status"
    if exit_code == 0:
        if reported:
            return trainer_status, trainer_reason  # type: ignore[return-value]
        return ("stopped" if stop_requested else "finished"), trainer_reason
    if stop_requested and trainer_status == "stopped":
        return "stopped", trainer_reason  # torchrun may exit non-zero after its workers stopped cleanly
    if exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else f"signal {-exit_code}"
        if stop_requested:
            when = "after the stop grace period" if -exit_code == signal.SIGKILL else "on the stop request"
            return "stopped", f"ended by {name} {when}, before it saved a checkpoint"
        return "failed", f"killed by {name}"
    detail = f": {trainer_reason}" if trainer_reason else "; see stdout.log"
    return "failed", f"exited with code {exit_code}{detail}"


def end_time(last_status: dict | None, started_at: float | None, now: float) -> float:
    """When a run's process ended: the time of its final status event from this attempt when there is one
    (a run that ended while the server was down must not get the restart time), else `now`."""
    if last_status is None or last_status.get("status") not in ("stopped", "finished", "failed"):
        return now
    sent = float(last_status["time"])
    return sent if (started_at is None or sent >= started_at) and sent <= now else now


# ---- processes -------------------------------------------------------------------------------------------


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


def signal_group(pid: int, sig: int) -> bool:
    """Signal the whole process group led by `pid`: the trainer, its data-loader workers, torchrun's workers."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_leader(pid: int, sig: int) -> bool:
    """Signal only the process the launcher started. A stop goes here: the trainer saves a checkpoint and ends
    its own data-loader workers (which run in their own session), and torchrun forwards the signal to its workers."""
    try:
        os.kill(pid, sig)
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


def _log_line(run_dir: Path, message: str) -> None:
    try:
        with (run_dir / "stdout.log").open("a", encoding="utf-8") as f:
            f.write(f"[cliplab {time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")
    except OSError:
        pass


def _summarize(notes: list[str], shown: int = 3) -> str:
    more = f"; and {len(notes) - shown} more" if len(notes) > shown else ""
    return "; ".join(notes[:shown]) + more


class Launcher:
    def __init__(self, svc: "Services"):
        self.svc = svc
        self.settings = svc.settings
        s = svc.settings
        self.gpu_indices: list[int] = list(s.gpus) if s.gpus is not None else [g["index"] for g in query_gpus(0)]
        self._procs: dict[str, subprocess.Popen] = {}  # runs we started
        self._adopted: dict[str, int] = {}  # runs a previous server started: pid, not our child
        self._kill_at: dict[str, float] = {}  # stop requested: SIGKILL after this time
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_tail = 0.0

    # -- lifecycle --

    def start(self) -> None:
        self.reconcile()
        self._thread = threading.Thread(target=self._loop, name="cliplab-launcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching; the trainers keep running and the next server re-adopts them."""
        self._halt.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def wake(self) -> None:
        self._wake.set()

    def forget(self, run_id: str) -> None:
        self.svc.tail.forget(run_id)

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - one bad tick must not end the monitor
                log.exception("launcher tick failed")
            self._wake.wait(self.settings.poll_s)
            self._wake.clear()

    def tick(self) -> None:
        now = time.time()
        self._reap()
        self._escalate_stops(now)
        if now >= self._next_tail:
            self._next_tail = now + self.settings.tail_every_s
            for run in self._active_runs():
                self.backfill(run.id, Path(run.run_dir))
        self._mark_silent(now)
        self._start_queued()

    # -- queries --

    def _active_runs(self) -> list[Run]:
        return self.svc.read(lambda s: list(s.exec(select(Run).where(Run.status.in_(ACTIVE_STATUSES)))))

    def holders(self) -> dict[int, str]:
        """GPU index -> id of the active run it is assigned to."""
        return {d: run.id for run in self._active_runs() for d in run.devices}

    def _tracked_pid(self, run_id: str) -> int | None:
        with self._lock:
            proc = self._procs.get(run_id)
            return proc.pid if proc is not None else self._adopted.get(run_id)

    # -- starting --

    def _start_queued(self) -> None:
        queued = self.svc.read(lambda s: list(s.exec(
            select(Run).where(Run.status == "queued").order_by(Run.created_at, Run.id))))
        if not queued:
            return
        active = self._active_runs()
        busy = {d for r in active for d in r.devices}
        cpu_active = sum(1 for r in active if r.gpus == 0)
        by_id = {r.id: r for r in queued}
        plan = plan_launches([(r.id, r.gpus) for r in queued], busy, self.gpu_indices, cpu_active,
                             self.settings.max_cpu_runs)
        for run_id, devices in plan:
            self._launch(by_id[run_id], devices)

    def _launch(self, run: Run, devices: list[int]) -> None:
        now = time.time()
        token = ""

        def claim(session: Session) -> Run | None:
            nonlocal token
            row = session.get(Run, run.id)
            if row is None or row.status != "queued":
                return None  # stopped or deleted since we looked
            token = grant_token(row)
            row.status, row.devices = "starting", devices
            row.last_seen = now
            row.started_at = now if row.started_at is None else row.started_at  # a resume keeps the first start
            row.attempts = attempts.opened(row.attempts, now)
            row.reason = row.exit_code = row.finished_at = row.trainer_status = row.trainer_reason = None
            row.stop_requested = False
            session.add(row)
            return row

        # The token is stored before the process exists, so its first POST is already accepted.
        row = self.svc.writer.call(claim)
        if row is None:
            return
        run_dir = Path(row.run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg_path = run_dir / "config.yaml"
            cfg_path.write_text(yaml.safe_dump(row.config, sort_keys=False))
            cmd = trainer_command(cfg_path, run_dir, row.nproc, row.resume)
            env = trainer_env(dict(os.environ), self.settings.server_url, row.id, token, self.settings.data_dir,
                              devices, self.settings.stop_grace_s)
            _log_line(run_dir, "launch: " + " ".join(shlex.quote(c) for c in cmd)
                      + f"  (CUDA_VISIBLE_DEVICES={env['CUDA_VISIBLE_DEVICES']!r})")
            with (run_dir / "stdout.log").open("ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=run_dir, env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            self._set_final(run.id, "failed", f"could not start the trainer: {exc}", None)
            return
        with self._lock:
            self._procs[run.id] = proc
        log.info("run %s started: pid %s, devices %s", run.id, proc.pid, devices or "cpu")

        def record_pid(session: Session) -> Run | None:
            row = session.get(Run, run.id)
            if row is None:
                return None
            row.pid = proc.pid
            session.add(row)
            return row

        row = self.svc.writer.call(record_pid)
        if row is not None:
            self.svc.publish_run(row)
            if row.stop_requested:  # stopped while it was being launched
                self.request_stop(row)

    # -- stopping and finishing --

    def request_stop(self, run: Run) -> None:
        """SIGTERM the run's process now (the trainer saves a checkpoint); SIGKILL its group after the grace."""
        with self._lock:
            self._kill_at[run.id] = time.time() + self.settings.stop_grace_s
        pid = self._tracked_pid(run.id)
        if pid is not None:
            _log_line(Path(run.run_dir), f"stop requested: SIGTERM to pid {pid}")
            signal_leader(pid, signal.SIGTERM)
        self.wake()

    def _escalate_stops(self, now: float) -> None:
        with self._lock:
            due = [run_id for run_id, t in self._kill_at.items() if now >= t]
        for run_id in due:
            with self._lock:
                self._kill_at.pop(run_id, None)
            pid = self._tracked_pid(run_id)
            if pid is not None and pid_alive(pid):
                log.warning("run %s ignored SIGTERM for %ss: SIGKILL", run_id, self.settings.stop_grace_s)
                signal_group(pid, signal.SIGKILL)

    def _reap(self) -> None:
        with self._lock:
            procs = list(self._procs.items())
            adopted = list(self._adopted.items())
        for run_id, proc in procs:
            code = proc.poll()
            if code is not None:
                with self._lock:
                    self._procs.pop(run_id, None)
                self._finish(run_id, code)
        for run_id, pid in adopted:
            if not pid_alive(pid):
                with self._lock:
                    self._adopted.pop(run_id, None)
                self._finish(run_id, None)

    def _finish(self, run_id: str, exit_code: int | None, gone_reason: str | None = None) -> None:
        with self._lock:
            self._kill_at.pop(run_id, None)
        run = self.svc.read(lambda s: s.get(Run, run_id))
        if run is None:
            return
        self.backfill(run_id, Path(run.run_dir))  # the last status event may not have been pushed
        run = self.svc.read(lambda s: s.get(Run, run_id))
        if run is None or run.status not in ACTIVE_STATUSES:
            return
        if run.pid and kill_stragglers(run.pid, run.run_dir):
            _log_line(Path(run.run_dir), f"killed processes left in process group {run.pid}")
        status, reason = final_state(exit_code, run.trainer_status, run.trainer_reason, run.stop_requested,
                                     gone_reason)
        _log_line(Path(run.run_dir), f"process ended (exit code {exit_code}): run {status}"
                  + (f" - {reason}" if reason else ""))
        ended = end_time(self.svc.read(metrics.last_status_event, run_id),
                         attempts.current_start(run.attempts, run.started_at), time.time())
        self._set_final(run_id, status, reason, exit_code, ended)

    def _set_final(self, run_id: str, status: str, reason: str | None, exit_code: int | None,
                   finished_at: float | None = None) -> None:
        finished_at = time.time() if finished_at is None else finished_at

        def job(session: Session) -> Run | None:
            row = session.get(Run, run_id)
            if row is None:
                return None
            row.status, row.reason, row.exit_code, row.finished_at = status, reason, exit_code, finished_at
            row.attempts = attempts.closed(row.attempts, finished_at, status, reason, exit_code)
            row.pid = row.token_hash = None  # the token dies with the process
            row.resume = row.stop_requested = False
            session.add(row)
            return row

        row = self.svc.writer.call(job)
        if row is not None:
            log.info("run %s %s%s", run_id, status, f": {reason}" if reason else "")
            self.svc.publish_run(row)
        self.wake()  # its GPUs or CPU slot are free

    # -- watching --

    def backfill(self, run_id: str, run_dir: Path) -> int:
        """Ingest the events.jsonl lines the database lacks (read in chunks to the end); returns how many.

        Invalid lines are skipped with one warning per chunk, so they cannot stall the run's catch-up.
        """
        new = 0
        path = run_dir / "events.jsonl"
        while lines := self.svc.tail.read_new(run_id, path):
            events, skipped = valid_file_events(lines)
            if skipped:
                log.warning("run %s: skipped %d invalid line(s) of %s: %s", run_id, len(skipped), path,
                            _summarize(skipped))
            if events:
                new += self._ingest_file_events(run_id, events)
        return new

    def _ingest_file_events(self, run_id: str, events: list[dict]) -> int:
        """Ingest a chunk; if the database refuses it, retry event by event and skip (and name) the refused."""
        try:
            return len(self.svc.ingest(run_id, events).accepted)
        except Exception:  # noqa: BLE001 - e.g. a value this database cannot store that validation let through
            pass
        accepted, refused = 0, []
        for ev in events:
            try:
                accepted += len(self.svc.ingest(run_id, [ev]).accepted)
            except Exception as exc:  # noqa: BLE001 - one refused event must not stop the others
                refused.append(f"seq {ev['seq']}: {type(exc).__name__}: {exc}".splitlines()[0])
        if refused:
            log.warning("run %s: the database refused %d event(s) of events.jsonl, skipped: %s", run_id,
                        len(refused), _summarize(refused))
        return accepted

    def _mark_silent(self, now: float) -> None:
        window = self.settings.lost_after_s
        for run in self._active_runs():
            if run.status not in ("starting", "running"):
                continue
            seen = run.last_seen or run.started_at or now
            if now - seen <= window:
                continue
            pid = self._tracked_pid(run.id)
            if pid is None or not pid_alive(pid):
                continue  # _reap finalizes it on this or the next tick
            reason = f"no events for {now - seen:.0f}s (window {window:.0f}s); process {pid} is still alive"

            def job(session: Session, run_id: str = run.id, reason: str = reason) -> Run | None:
                row = session.get(Run, run_id)
                if row is None or row.status not in ("starting", "running"):
                    return None
                row.status, row.reason = "lost", reason
                session.add(row)
                return row

            row = self.svc.writer.call(job)
            if row is not None:
                log.warning("run %s lost: %s", run.id, reason)
                self.svc.publish_run(row)

    def reconcile(self) -> None:
        """On start: backfill every active run, re-adopt live trainers, finalize the ones that are gone."""
        for run in self._active_runs():
            self.backfill(run.id, Path(run.run_dir))
            if run.pid and pid_is_trainer(run.pid, run.run_dir):
                self.adopt(run.id, run.pid)
                if run.status == "stopping":
                    with self._lock:
                        self._kill_at[run.id] = time.time() + self.settings.stop_grace_s
                log.info("run %s re-adopted: pid %s is still training", run.id, run.pid)
            else:
                gone = (f"the trainer process (pid {run.pid}) was gone when the server restarted" if run.pid
                        else "the server stopped before the trainer process started")
                self._finish(run.id, None, gone)

    def adopt(self, run_id: str, pid: int) -> None:
        """Watch a live trainer this server did not start (its pid leads its process group)."""
        now = time.time()

        def job(session: Session) -> None:
            row = session.get(Run, run_id)
            if row is not None:
                row.pid, row.last_seen = pid, now  # a fresh silence window
                session.add(row)

        self.svc.writer.call(job)
        with self._lock:
            self._adopted[run_id] = pid
