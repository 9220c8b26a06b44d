"""Database tables (SQLModel) and the API's request/response shapes.

Times are unix seconds (float), like the events' `time`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, SkipValidation, StringConstraints
from pydantic import Field as PField
from sqlalchemy import JSON, BigInteger, Column, Index, SmallInteger, Text
from sqlmodel import Field, SQLModel

from backend.attempts import duration_s, opened
from contract.config import MAX_TAGS, Tag
from contract.events import Event as TrainerEvent
from contract.run_dir import LATEST, read_pointer
from contract.sweep import DEFAULT_MAX_RUNS, MAX_RUNS_CEILING

ACTIVE_STATUSES = ("starting", "running", "stopping", "lost")  # a process may exist
TERMINAL_STATUSES = ("stopped", "finished", "failed")
RUN_STATUSES = ("queued", *ACTIVE_STATUSES, *TERMINAL_STATUSES)
MAX_NOTES_LEN = 10_000


def _distinct(tags: list[str]) -> list[str]:
    return list(dict.fromkeys(tags))


# The tag rule of create, clone and edit: contract.config's Tag (1-64 characters after trimming), at most 32,
# repeats dropped.
Tags = Annotated[list[Tag], PField(max_length=MAX_TAGS), AfterValidator(_distinct)]
RunName = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Notes = Annotated[str, PField(max_length=MAX_NOTES_LEN, description="Free text about the run (Markdown is shown as typed).")]


class Run(SQLModel, table=True):
    __tablename__ = "runs"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(index=True, max_length=200)
    status: str = Field(default="queued", index=True, max_length=16)
    reason: str | None = None
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    gpus: int = 0
    nproc: int = 1
    devices: list[int] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    step: int = Field(default=0, sa_type=BigInteger)
    total_steps: int | None = Field(default=None, sa_type=BigInteger)
    latest: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    best: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    metric_names: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    model: str = ""
    dataset: str = ""
    created_at: float = Field(index=True)
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    run_dir: str = ""
    notes: str = Field(default="", sa_type=Text)
    # Each launch of the trainer, oldest first (backend/attempts.py).
    attempts: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Launcher bookkeeping, never shown to clients.
    pid: int | None = None
    token_hash: str | None = Field(default=None, max_length=128)
    last_seq: int = Field(default=-1, sa_type=BigInteger)
    last_seen: float | None = None
    resume: bool = False
    # The step directory (checkpoints/<name>) the run's last resume started from, None for `latest`: the queued
    # attempt's `--resume`, and what the Run shows afterwards (a rewind past a loss spike).
    resume_from: str | None = Field(default=None, max_length=200)
    stop_requested: bool = False
    trainer_status: str | None = Field(default=None, max_length=16)
    trainer_reason: str | None = None
    # Where it trains: "local" (a subprocess here) or "slurm" (a batch job); see services/executors.
    executor: str = Field(default="local", max_length=32)
    slurm: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # requested
    slurm_job_id: str | None = Field(default=None, max_length=32)  # the current attempt's job
    slurm_partition: str | None = Field(default=None, max_length=64)
    slurm_nodelist: str | None = None
    # A run its trainer registered from outside (`cliplab train --server`): no process here to watch or signal.
    attached: bool = False
    attached_host: str | None = Field(default=None, max_length=255)

    def clear_outcome(self) -> None:
        """Forget how the last attempt ended: the run is queued or starting again."""
        self.reason = self.exit_code = self.finished_at = self.trainer_status = self.trainer_reason = None
        self.stop_requested = False

    def start_attempt(self, now: float) -> None:
        """A new attempt starts `now`: `starting`, a fresh silence window, the run's first start kept."""
        self.status, self.last_seen = "starting", now
        self.started_at = now if self.started_at is None else self.started_at
        self.attempts = opened(self.attempts, now)
        self.clear_outcome()


class SeriesRow(SQLModel):
    """What every row of a series table (metric_points, metric_nonfinite) has: the primary key (run_id, name,
    step, seq), which is the (run_id, name, step) index the series queries scan and makes re-ingesting an event
    a no-op, and the event's time. SQLite stores such a table clustered on the key (WITHOUT ROWID), so a series
    is one contiguous range read."""

    run_id: str = Field(foreign_key="runs.id", ondelete="CASCADE", primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=200)
    step: int = Field(primary_key=True, sa_type=BigInteger)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    time: float


class MetricPoint(SeriesRow, table=True):
    """One finite scalar of a `metric`, `eval` or `system` event."""

    __tablename__ = "metric_points"
    __table_args__ = ({"sqlite_with_rowid": False},)

    value: float


class NonFinitePoint(SeriesRow, table=True):
    """A series value a `metric`, `eval` or `system` event sent as null (NaN or infinite where it was measured):
    kept apart from metric_points, whose min/max/last it has none of, so a chart can say where a series diverged
    and that a series with no points did log steps."""

    __tablename__ = "metric_nonfinite"
    __table_args__ = ({"sqlite_with_rowid": False},)


class MetricRollup(SQLModel, table=True):
    """Min, max and last step of a series over an aligned block of 16 ** level steps (store/rollups.py),
    maintained at ingest so a chart of a long series reads blocks instead of every point."""

    __tablename__ = "metric_rollups"
    __table_args__ = ({"sqlite_with_rowid": False},)

    run_id: str = Field(foreign_key="runs.id", ondelete="CASCADE", primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=200)
    level: int = Field(primary_key=True, sa_type=SmallInteger)
    block_start: int = Field(primary_key=True, sa_type=BigInteger)
    vmin: float
    vmax: float
    last_step: int = Field(sa_type=BigInteger)


class Event(SQLModel, table=True):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_kind_seq", "run_id", "kind", "seq"),)

    run_id: str = Field(foreign_key="runs.id", ondelete="CASCADE", primary_key=True, max_length=64)
    seq: int = Field(primary_key=True, sa_type=BigInteger)
    kind: str = Field(max_length=32)
    time: float
    step: int | None = Field(default=None, sa_type=BigInteger)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))


class Checkpoint(SQLModel, table=True):
    __tablename__ = "checkpoints"

    run_id: str = Field(foreign_key="runs.id", ondelete="CASCADE", primary_key=True, max_length=64)
    name: str = Field(primary_key=True, max_length=200)
    step: int = Field(default=0, sa_type=BigInteger)
    kind: str = Field(default="latest", max_length=32)
    path: str = ""
    time: float = 0.0


def resume_checkpoint(run_dir: str) -> Path | None:
    """The step directory a resume starts from (`cliplab train --resume latest` in the run dir), or None."""
    return read_pointer(run_dir, LATEST)


# ---- API shapes ---------------------------------------------------------------------------------------


class RunAttempt(BaseModel):
    """One launch of a run's trainer: the first start or a resume."""

    started_at: float
    ended_at: float | None = PField(None, description="null while this attempt runs")
    status: str | None = PField(None, description="how it ended: finished, stopped or failed")
    reason: str | None = None
    exit_code: int | None = None


class RunPublic(BaseModel):
    id: str
    name: str
    status: str
    reason: str | None
    tags: list[str]
    notes: str = ""
    config: dict[str, Any]
    gpus: int
    nproc: int
    devices: list[int]
    step: int
    total_steps: int | None
    latest: dict[str, Any]
    best: dict[str, Any]
    model: str
    dataset: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    run_dir: str
    last_seq: int
    executor: str = "local"
    slurm: dict[str, Any] = PField(default_factory=dict, description="The SLURM resources asked for.")
    slurm_job_id: str | None = None
    slurm_partition: str | None = None
    slurm_nodelist: str | None = None
    attached: bool = PField(False, description="Started outside the server (`cliplab train --server`) and "
                                               "attached; the server neither launched nor can signal it.")
    attached_host: str | None = PField(None, description="The host an attached run's trainer runs on.")
    attempts: list[RunAttempt] = PField(default_factory=list, description="Each launch, oldest first.")
    duration_s: float | None = PField(None, description="Seconds spent running, summed over the attempts.")
    can_resume: bool = PField(False, description="Stopped, failed or finished with checkpoints/latest to resume "
                                                 "from (a finished run resumes only with a larger train.steps).")
    resume_from: str | None = PField(None, description="The checkpoint (step directory) the last resume started "
                                                       "from when one was picked; null: latest, or never resumed.")

    @classmethod
    def of(cls, run: Run) -> "RunPublic":
        public = cls.model_validate(run, from_attributes=True)
        public.can_resume = (not run.attached and run.status in TERMINAL_STATUSES
                             and resume_checkpoint(run.run_dir) is not None)
        public.duration_s = duration_s(run.attempts, time.time(), run.started_at, run.finished_at,
                                       active=run.status in ACTIVE_STATUSES)
        return public


class RunList(BaseModel):
    items: list[RunPublic]
    total: int


class SlurmRequest(BaseModel):
    """The SLURM resources of a run; unset fields take the server's defaults."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = PField(None, max_length=64)
    nodes: int = PField(1, ge=1, le=4096)
    gpus_per_node: int = PField(0, ge=0, le=64)
    cpus_per_task: int | None = PField(None, ge=1, le=1024)
    time_limit: str | None = PField(None, max_length=32, description="minutes, HH:MM:SS or D-HH:MM:SS")
    qos: str | None = PField(None, max_length=64)


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: RunName | None = None
    config: dict[str, Any] = PField(default_factory=dict)
    gpus: int = PField(0, ge=0, le=64)
    nproc: int | None = PField(None, ge=1, le=64, description="Processes; default max(gpus, 1).")
    tags: Tags | None = None
    notes: Notes = ""
    executor: str | None = PField(None, max_length=32, description="local or slurm; default the server's first.")
    slurm: SlurmRequest | None = PField(None, description="SLURM resources (executor slurm only).")


class RunClone(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: RunName | None = None
    overrides: dict[str, Any] = PField(default_factory=dict, description='Dotted keys: {"optim.lr": 1e-4}.')
    gpus: int | None = PField(None, ge=0, le=64)
    nproc: int | None = PField(None, ge=1, le=64)
    tags: Tags | None = PField(None, description="Default: the source run's tags.")
    notes: Notes = ""


class RunUpdate(BaseModel):
    """PATCH /api/runs/{id}: what may change after a run started. Fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: RunName | None = None
    notes: Notes | None = None
    tags: Tags | None = None
    # Edits of the stored tags, applied in the same write that reads them: two people (or a bulk action and an
    # edit) tagging one run at once both keep their tag, where two whole-list `tags` writes lose one.
    add_tags: list[Tag] | None = PField(None, max_length=MAX_TAGS, description="Tags to add (kept in this order).")
    remove_tags: list[Tag] | None = PField(None, max_length=MAX_TAGS, description="Tags to remove.")


class RunResume(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overrides: dict[str, Any] = PField(default_factory=dict, description='e.g. {"train.steps": 2000} to go on.')
    checkpoint: str | None = PField(None, max_length=200, description=(
        "A complete step directory of the run to continue from (`step_003000`; `latest` or `best` for the one that "
        "pointer names); default latest. The run's newer checkpoints are abandoned: removed at its first save."))


class RunAttach(BaseModel):
    """A trainer started outside the server registers its run (`cliplab train --server`, `cliplab sync`)."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = PField(description="The run's resolved config (its config.yaml).")
    run_dir: str = PField(min_length=1, max_length=4096, description="The run directory on the trainer's host.")
    host: str = PField("", max_length=255, description="The trainer's host name, shown in the dashboard.")
    nproc: int = PField(1, ge=1, le=65536, description="Processes (torchrun world size).")
    gpus: int = PField(0, ge=0, le=65536)
    run_id: str | None = PField(None, max_length=64, description=(
        "Continue this attached run (resume or sync) from its own run_dir; 409 for another directory unless "
        "run_token shows it is the run's, moved."))
    run_token: str | None = PField(None, max_length=512, description=(
        "With run_id: the ingest token the run's last registration answered (attach.json keeps it), which shows "
        "that a run_dir other than the run's is the run's own, moved. Another run's token is refused (409)."))
    live: bool = PField(True, description="A trainer starts now (the run becomes `starting`); false for an "
                                          "upload of a finished run directory, which leaves the state to the events.")


class RunAttached(BaseModel):
    run: RunPublic
    token: str = PField(description="The run's ingest token: `Authorization: Bearer <token>` on its events.")


class RunControl(BaseModel):
    status: str
    stop_requested: bool = PField(description="The dashboard asked this run to stop: save a checkpoint and end.")


class EventBatch(BaseModel):
    # Documented as contract.events' models; each event stays the dict that was sent (extra fields and all)
    # and the ingest service checks it, naming the bad field as events[3].seq in the API's 422 shape.
    events: list[SkipValidation[TrainerEvent]] = PField(description="The run's events, any kinds, in any order.")


class IngestResult(BaseModel):
    accepted: int
    duplicates: int
    uncharted: list[str] = PField(default_factory=list, description=(
        "New metric names past the run's series limit (CLIPLAB_MAX_SERIES_PER_RUN; the first 20 of them): their "
        "values are kept in the stored events but not charted."))


class ConfigValidate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # like create's body: a misspelt `gpu` must not pass silently

    config: dict[str, Any] = PField(default_factory=dict)
    gpus: int | None = PField(None, ge=0, le=64, description="With gpus, the limits of a run on this machine "
                              "(CPU cores, loader workers) are checked too, as creating the run would.")
    nproc: int | None = PField(None, ge=1, le=64)
    executor: str | None = PField(None, max_length=32)


class SweepAxis(BaseModel):
    """One swept setting, in `cliplab sweep --grid`'s grammar (contract/sweep.py)."""

    model_config = ConfigDict(extra="forbid")

    key: str = PField(max_length=200, description="A dotted config key, e.g. optim.lr.")
    values: str = PField(max_length=10_000, description=(
        "Comma-separated values (`1e-4,3e-4`, each read as `--set` reads it), a YAML list (`[[1,5],[1,10]]`), or "
        "with `random` a range: `loguniform(1e-5,1e-3)`, `uniform(0.1,0.5)`, `randint(1,8)` (inclusive)."))


class SweepCreate(BaseModel):
    """POST /api/sweeps: a base config and the settings to sweep; each point becomes a run as POST /api/runs makes."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = PField(default_factory=dict, description="The config every run starts from.")
    axes: list[SweepAxis] = PField(default_factory=list, max_length=64)
    random: int | None = PField(None, ge=1, le=MAX_RUNS_CEILING, description=(
        "Draw this many runs at random (seeded) instead of every combination."))
    seed: int = PField(0, ge=-(2**63), le=2**63 - 1, description="Seed of the random draws.")
    max_runs: int = PField(DEFAULT_MAX_RUNS, ge=1, le=MAX_RUNS_CEILING, description=(
        "Refuse a sweep of more runs than this, before listing them."))
    name: RunName | None = PField(None, description="What the run names start with; default the config's name.")
    tags: Tags | None = PField(None, description="The tags every run gets besides the config's (default "
                                                 "sweep-<name>-<time>); the runs-table link shows the first.")
    gpus: int = PField(0, ge=0, le=64)
    nproc: int | None = PField(None, ge=1, le=64, description="Processes; default max(gpus, 1).")
    executor: str | None = PField(None, max_length=32, description="local or slurm; default the server's first.")
    slurm: SlurmRequest | None = PField(None, description="SLURM resources (executor slurm only).")
    dry_run: bool = PField(False, description="Plan and check every run; create none (answers 200).")


class PlannedRun(BaseModel):
    name: str
    overrides: dict[str, Any] = PField(description="The run's swept settings, by dotted key.")


class SweepProblem(BaseModel):
    field: str = PField(description="The config field (or swept setting) refused, relative to the config.")
    message: str = PField(description="The setting and value refused, the first run with it, and why.")


class SweepAnswer(BaseModel):
    valid: bool = PField(description="Every run's config passes the checks of POST /api/runs.")
    runs: list[PlannedRun] = PField(description="The sweep's runs in order (a dry run's plan).")
    problems: list[SweepProblem] = PField(default_factory=list, description="Why the server refuses the sweep.")
    keys: list[str] = PField(description="The swept settings.")
    tag: str = PField(description="The tag the runs-table link filters on.")
    link: str = PField(description="The dashboard path of the runs table showing only this sweep.")
    created: list[RunPublic] = PField(default_factory=list, description="The runs queued (none on a dry run).")


class NotificationDelivery(BaseModel):
    index: int = PField(description="The webhook's position among the configured ones (--notify-url order).")
    url: str = PField(description="The webhook's scheme and host only: its path is often the secret.")
    ok: bool = PField(description="The webhook answered 2xx.")
    status: int | None = PField(None, description="Its HTTP status; null when it did not answer.")
    error: str | None = PField(None, description="Why it was not delivered (the status, or the connection error).")


class NotificationTest(BaseModel):
    delivered: int = PField(description="How many webhooks took the test message.")
    results: list[NotificationDelivery] = PField(description="One per configured webhook, in their order.")
