"""Queues, starts, watches and stops runs; the executors (executors/) run the trainer somewhere.

One monitor thread ticks every `poll_s`: poll each executor and apply what it says (a SLURM job pending
keeps its run `queued` with the reason; an ended job's final state comes from its exit code and the last
status event), kill stops past their grace period, backfill events.jsonl lines the HTTP push missed, mark
silent runs `lost`, and start queued runs (local ones when their GPUs or CPU slot are free, SLURM ones at
once: SLURM queues them). Attached runs (services/attach.py) have no job here, but the same tick marks the
silent ones `lost`. A restarted server re-attaches every job still alive.

The launcher gets what it uses from the server (settings, database, event tail, publish and ingest) as
constructor arguments, so it never imports the services container that builds it (services/container.py).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from sqlalchemy.engine import Engine
from sqlmodel import Session

from backend import attempts, store
from backend.db import DbWriter, read
from backend.models import ACTIVE_STATUSES, Run
from backend.services.executors import Executor, ExecutorError, JobState, TrainerJob, build_executors
from backend.services.executors.base import append_log as _log_line
from backend.services.executors.local import LocalExecutor
from backend.services.ingest import EventFileTail, IngestOutcome, grant_token, valid_file_events
from backend.services.system import query_gpus
from backend.settings import Settings
from contract.events import ENV_RUN_ID, ENV_SERVER, ENV_TOKEN, EVENTS_FILE, STOP_REQUESTED_REASON
from contract.run_dir import CONFIG_FILE, STDOUT_LOG

T = TypeVar("T")
log = logging.getLogger("cliplab.launcher")
ATTACHED_REPORTING = ("starting", "running", "stopping")  # an attached trainer should be sending events
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
    if stop_requested and trainer_status == "stopped":
        # It saved a checkpoint on the SIGTERM we sent (torchrun may exit non-zero after that): say why it came.
        return "stopped", STOP_REQUESTED_REASON
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
    if exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else f"signal {-exit_code}"
        if stop_requested:
            when = "after the stop grace period" if -exit_code == signal.SIGKILL else "on the stop request"
            return "stopped", f"ended by {name} {when}, before it saved a checkpoint"
        return "failed", f"killed by {name}"
    detail = f": {trainer_reason}" if trainer_reason else "; see stdout.log"
    return "failed", f"exited with code {exit_code}{detail}"


def job_final_state(job: JobState, trainer_status: str | None, trainer_reason: str | None,
                    stop_requested: bool, gone_reason: str | None = None) -> tuple[str, str | None]:
    """`final_state`, unless the scheduler ended the job on its own (cancelled outside the dashboard, time
    limit, node failure): then the run failed with the scheduler's word, or stopped with a checkpoint."""
    if job.ended_by and not stop_requested and trainer_status != "finished":
        if job.timed_out and trainer_status == "stopped":
            return "stopped", f"{job.ended_by}; the trainer saved a checkpoint, resume to go on"
        detail = f" ({trainer_reason})" if trainer_status == "failed" and trainer_reason else ""
        return "failed", job.ended_by + detail
    return final_state(job.exit_code, trainer_status, trainer_reason, stop_requested, gone_reason)


def end_time(last_status: dict | None, started_at: float | None, now: float) -> float:
    """When a run's process ended: the time of its final status event from this attempt when there is one
    (a run that ended while the server was down must not get the restart time), else `now`."""
    if last_status is None or last_status.get("status") not in ("stopped", "finished", "failed"):
        return now
    sent = float(last_status["time"])
    return sent if (started_at is None or sent >= started_at) and sent <= now else now


def _summarize(notes: list[str], shown: int = 3) -> str:
    more = f"; and {len(notes) - shown} more" if len(notes) > shown else ""
    return "; ".join(notes[:shown]) + more


class Launcher:
    def __init__(self, settings: Settings, *, engine: Engine, writer: DbWriter, tail: EventFileTail,
                 publish_run: Callable[[Run], Any], ingest: Callable[[str, list[dict]], IngestOutcome]):
        """`publish_run(run)` tells the streams a run changed; `ingest(run_id, events)` stores valid events."""
        self.settings = settings
        self.engine, self.writer, self.tail = engine, writer, tail
        self.publish_run, self.ingest = publish_run, ingest
        self.gpu_indices: list[int] = (list(settings.gpus) if settings.gpus is not None
                                       else [g["index"] for g in query_gpus(0)])
        self.executors: dict[str, Executor] = build_executors(settings)
        self._kill_at: dict[str, float] = {}  # stop requested: kill after this time
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
        self.tail.forget(run_id)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return read(self.engine, fn, *args)

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
        self._mark_silent_attached(now)
        self._start_queued()

    # -- queries --

    def _active_runs(self) -> list[Run]:
        """Active runs this server launched (attached runs have no process here: services/attach.py)."""
        return self._read(store.active_launched_runs)

    def _watched_runs(self) -> list[Run]:
        """Runs with a job somewhere: the active ones and those a scheduler holds in its queue."""
        return self._read(store.watched_launched_runs)

    def executor_of(self, run: Run) -> Executor:
        executor = self.executors.get(run.executor)
        if executor is None:
            raise ExecutorError(f"run {run.id} uses the {run.executor!r} executor, which this server does not "
                                f"enable (--executor {run.executor})")
        return executor

    def log_path(self, run: Run) -> Path:
        """The file holding the run's trainer output, wherever its executor put it."""
        executor = self.executors.get(run.executor)
        return executor.log_path(run) if executor is not None else Path(run.run_dir) / STDOUT_LOG

    def holders(self) -> dict[int, str]:
        """GPU index -> id of the active run it is assigned to."""
        return {d: run.id for run in self._active_runs() for d in run.devices}

    # -- starting --

    def _start_queued(self) -> None:
        queued = self._read(store.queued_unsubmitted_runs)
        local = [r for r in queued if r.executor == "local"]
        for run in queued:
            if run.executor != "local":
                self._launch(run, [])  # the scheduler queues it (or it fails: executor not enabled here)
        if not local:
            return
        active = self._active_runs()
        busy = {d for r in active for d in r.devices}
        cpu_active = sum(1 for r in active if r.gpus == 0 and r.executor == "local")
        by_id = {r.id: r for r in local}
        plan = plan_launches([(r.id, r.gpus) for r in local], busy, self.gpu_indices, cpu_active,
                             self.settings.max_cpu_runs)
        for run_id, devices in plan:
            self._launch(by_id[run_id], devices)

    def _claim(self, run_id: str, devices: list[int]) -> tuple[Run | None, str]:
        """Mark a queued run `starting` with a fresh token (stored before the process exists, so its first
        POST is already accepted); None when it was stopped or deleted since we looked."""
        now = time.time()
        token = ""

        def claim(row: Run) -> None:
            nonlocal token
            token = grant_token(row)
            row.start_attempt(now)
            row.devices = devices

        row = self.writer.call(store.edit_run, run_id, claim, lambda r: r.status == "queued")
        return row, token

    def _launch(self, run: Run, devices: list[int]) -> None:
        row, token = self._claim(run.id, devices)
        if row is None:
            return
        run_dir = Path(row.run_dir)
        try:
            executor = self.executor_of(row)
            run_dir.mkdir(parents=True, exist_ok=True)
            cfg_path = run_dir / CONFIG_FILE
            cfg_path.write_text(yaml.safe_dump(row.config, sort_keys=False))
            env = trainer_env(dict(os.environ), self.settings.server_url, row.id, token, self.settings.data_dir,
                              devices, self.settings.stop_grace_s)
            fields = executor.submit(TrainerJob(row, run_dir, cfg_path, env, devices))
        except (OSError, ExecutorError) as exc:
            self._set_final(run.id, "failed", f"could not start the trainer: {exc}", None)
            return
        log.info("run %s started on %s: %s, devices %s", run.id, executor.name, fields, devices or "cpu")
        row = self._record(run.id, fields)
        if row is not None:
            self.publish_run(row)
            if row.stop_requested:  # stopped while it was being launched
                self.request_stop(row)

    def _record(self, run_id: str, fields: dict[str, Any], status: str | None = None,
                reason: str | None = None) -> Run | None:
        def record(row: Run) -> None:
            for key, value in fields.items():
                setattr(row, key, value)
            if status is not None:
                row.status, row.reason = status, reason

        return self.writer.call(store.edit_run, run_id, record)

    # -- stopping and finishing --

    def request_stop(self, run: Run) -> None:
        """Ask the trainer to stop (SIGTERM: it saves a checkpoint); kill the job after the grace period."""
        with self._lock:
            self._kill_at[run.id] = time.time() + self.settings.stop_grace_s
        try:
            note = self.executor_of(run).request_stop(run)
        except ExecutorError as exc:
            note = f"stop request failed: {exc}"
        if note:
            _log_line(Path(run.run_dir), note)
        self.wake()

    def _escalate_stops(self, now: float) -> None:
        with self._lock:
            due = [run_id for run_id, t in self._kill_at.items() if now >= t]
        for run_id in due:
            with self._lock:
                self._kill_at.pop(run_id, None)
            run = self._read(store.get_run, run_id)
            if run is None or run.status not in ACTIVE_STATUSES:
                continue
            log.warning("run %s ignored SIGTERM for %ss: killing it", run_id, self.settings.stop_grace_s)
            try:
                self.executor_of(run).kill(run)
            except ExecutorError as exc:
                log.warning("run %s: %s", run_id, exc)

    def _reap(self) -> None:
        """Poll every executor about its runs' jobs and apply what they say."""
        by_executor: dict[str, list[Run]] = {}
        for run in self._watched_runs():
            by_executor.setdefault(run.executor, []).append(run)
        for name, runs in by_executor.items():
            executor = self.executors.get(name)
            if executor is None:
                continue
            try:
                states = executor.poll(runs)
            except ExecutorError as exc:
                log.warning("polling the %s executor failed: %s", name, exc)
                continue
            for run in runs:
                if run.id in states:
                    self._apply(run, states[run.id])

    def _apply(self, run: Run, state: JobState) -> None:
        """A job's state as the run's: pending keeps it queued with the reason, running starts it, ended ends it."""
        if state.phase == "ended":
            self._finish(run.id, state)
            return
        status = run.status
        if state.phase == "pending" and status in ("queued", "starting"):
            status, reason = "queued", state.reason
        elif state.phase == "running" and status == "queued":
            status, reason = "starting", None
        else:
            reason = run.reason
        changed = {k: v for k, v in state.where.items() if getattr(run, k) != v}
        if state.phase == "pending" and run.started_at is not None and status == "queued" and len(run.attempts) <= 1:
            changed["started_at"] = None  # it has not started: SLURM holds it (a resumed run keeps its first start)
        if status == run.status and reason == run.reason and not changed:
            return
        if status == "starting" and run.status == "queued":  # the silence window and the attempt start now
            changed.update(attempts.started_fields(run.attempts, run.started_at, time.time()))
        row = self._record(run.id, changed, status, reason)
        if row is not None:
            self.publish_run(row)

    def _finish(self, run_id: str, job: JobState, gone_reason: str | None = None) -> None:
        with self._lock:
            self._kill_at.pop(run_id, None)
        run = self._read(store.get_run, run_id)
        if run is None:
            return
        self.backfill(run_id, Path(run.run_dir))  # the last status event may not have been pushed
        run = self._read(store.get_run, run_id)
        if run is None or (run.status not in ACTIVE_STATUSES and run.status != "queued"):
            return
        status, reason = job_final_state(job, run.trainer_status, run.trainer_reason, run.stop_requested,
                                         gone_reason)
        _log_line(Path(run.run_dir), f"process ended (exit code {job.exit_code}): run {status}"
                  + (f" - {reason}" if reason else ""))
        ended = end_time(self._read(store.last_status_event, run_id),
                         attempts.current_start(run.attempts, run.started_at), time.time())
        self._set_final(run_id, status, reason, job.exit_code, ended, job.where)

    def _set_final(self, run_id: str, status: str, reason: str | None, exit_code: int | None,
                   finished_at: float | None = None, fields: dict[str, Any] | None = None) -> None:
        finished_at = time.time() if finished_at is None else finished_at

        def end(row: Run) -> None:
            for key, value in (fields or {}).items():
                setattr(row, key, value)
            row.status, row.reason, row.exit_code, row.finished_at = status, reason, exit_code, finished_at
            row.attempts = attempts.closed(row.attempts, finished_at, status, reason, exit_code)
            row.pid = row.token_hash = None  # the token dies with the process
            row.resume = row.stop_requested = False

        row = self.writer.call(store.edit_run, run_id, end)
        if row is not None:
            log.info("run %s %s%s", run_id, status, f": {reason}" if reason else "")
            self.publish_run(row)
            for executor in self.executors.values():
                executor.forget(run_id)
        self.wake()  # its GPUs or CPU slot are free

    # -- watching --

    def backfill(self, run_id: str, run_dir: Path) -> int:
        """Ingest the events.jsonl lines the database lacks (read in chunks to the end); returns how many.

        Invalid lines are skipped with one warning per chunk, so they cannot stall the run's catch-up.
        """
        new = 0
        path = run_dir / EVENTS_FILE
        while lines := self.tail.read_new(run_id, path):
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
            return len(self.ingest(run_id, events).accepted)
        except Exception:  # noqa: BLE001 - e.g. a value this database cannot store that validation let through
            pass
        accepted, refused = 0, []
        for ev in events:
            try:
                accepted += len(self.ingest(run_id, [ev]).accepted)
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
            executor = self.executors.get(run.executor)
            if executor is None or not executor.alive(run):
                continue  # _reap finalizes it on this or the next tick
            where = f"process {run.pid}" if run.pid else f"{executor.name} job {run.slurm_job_id or ''}".rstrip()
            reason = f"no events for {now - seen:.0f}s (window {window:.0f}s); {where} is still alive"

            def lose(row: Run, reason: str = reason) -> None:
                row.status, row.reason = "lost", reason

            row = self.writer.call(store.edit_run, run.id, lose, lambda r: r.status in ("starting", "running"))
            if row is not None:
                log.warning("run %s lost: %s", run.id, reason)
                self.publish_run(row)

    def _mark_silent_attached(self, now: float) -> None:
        """Attached runs not heard from for `lost_after_s` become `lost` (an event brings them back)."""
        window = self.settings.lost_after_s
        if not self._read(store.silent_attached_runs, ATTACHED_REPORTING, now - window, 1):
            return  # the common case costs one read, no write

        def job(session: Session) -> list[Run]:
            rows = store.silent_attached_runs(session, ATTACHED_REPORTING, now - window)
            for row in rows:
                where = f" on {row.attached_host}" if row.attached_host else ""
                row.status = "lost"
                row.reason = (f"no events from the attached trainer{where} for {now - (row.last_seen or now):.0f}s "
                              f"(window {window:.0f}s)")
                store.save_run(session, row)
            return rows

        for row in self.writer.call(job):
            self.publish_run(row)

    def reconcile(self) -> None:
        """On start: backfill every watched run, re-attach live jobs, finalize the ones that are gone."""
        for run in self._watched_runs():
            self.backfill(run.id, Path(run.run_dir))
            executor = self.executors.get(run.executor)
            try:
                alive = executor is not None and executor.reattach(run)
            except ExecutorError as exc:
                log.warning("run %s: could not re-attach: %s", run.id, exc)
                alive = True  # the scheduler did not answer: keep the run and ask again on the next tick
            if alive:
                self._refresh_silence_window(run.id)
                if run.status == "stopping":
                    with self._lock:
                        self._kill_at[run.id] = time.time() + self.settings.stop_grace_s
                handle = f"pid {run.pid} is still training" if run.pid else f"job {run.slurm_job_id}"
                log.info("run %s re-adopted: %s", run.id, handle)
            else:
                gone = (f"this server does not enable the {run.executor!r} executor the run was started with"
                        if executor is None else
                        f"the trainer process (pid {run.pid}) was gone when the server restarted" if run.pid
                        else f"SLURM job {run.slurm_job_id} was gone when the server restarted"
                        if run.slurm_job_id else "the server stopped before the trainer process started")
                self._finish(run.id, JobState("ended"), gone)

    def _refresh_silence_window(self, run_id: str, pid: int | None = None) -> None:
        now = time.time()

        def refresh(row: Run) -> None:
            row.last_seen = now  # a fresh silence window
            if pid is not None:
                row.pid = pid

        self.writer.call(store.edit_run, run_id, refresh)

    def adopt(self, run_id: str, pid: int) -> None:
        """Watch a live local trainer this server did not start (its pid leads its process group)."""
        self._refresh_silence_window(run_id, pid)
        local = self.executors["local"]
        assert isinstance(local, LocalExecutor)
        local.adopt(run_id, pid)
