"""The event half of the run contract between trainer and backend (see docs/architecture.md "Events").

An event is one JSON object: {"seq": int, "time": float, "kind": str, ...fields}. `seq` increases strictly
within a run, across resumes too. Rank 0 appends every event to <run_dir>/events.jsonl (the durable copy)
and may also POST batches to <server>/api/runs/<run_id>/events.

Each kind is one pydantic model below; `Event` is their union on `kind`. The trainer checks what it writes
against them and the backend what it stores; both keep the event as the plain dict that was sent, extra
fields included (a newer trainer's field must not make an older server refuse the event). Fields the
contract documents but never checked are typed `Any`, so the models accept exactly what was accepted before.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any, Iterator, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

RunStatus = Literal["starting", "running", "stopped", "finished", "failed"]
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
EVENTS_FILE = "events.jsonl"

ENV_SERVER = "CLIPLAB_SERVER"
ENV_TOKEN = "CLIPLAB_RUN_TOKEN"
ENV_RUN_ID = "CLIPLAB_RUN_ID"
# Why a run stopped when the dashboard or the API asked it to (its trainer may only have seen a SIGTERM).
STOP_REQUESTED_REASON = "stop requested from the dashboard"

INT64_MAX = 2**63 - 1  # seq is a BIGINT column
# Steps are BIGINT columns too, but the series queries multiply a step by up to 20,000 buckets in 64-bit
# integers (PostgreSQL: "bigint out of range"), so steps stop at 2^48 (2.8e14, far past any training).
MAX_STEP = 2**48
STEP_RULE = f"must be an integer in 0..{MAX_STEP}"
MAX_NAME_LEN = 200  # a series name (a key of `values`)
COUNT_RULE = f"must be an integer in 0..{INT64_MAX}"

Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
Step = Annotated[int, Field(ge=0, le=MAX_STEP)]
FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]  # strict: an int is a number, a bool is not
NO_NUL = r"^[^\x00]*$"  # names and paths become database text, which cannot hold NUL on PostgreSQL
SeriesName = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LEN, pattern=NO_NUL)]


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _may_be_absent(description: str) -> Any:
    """A field an event may leave out. Its `None` default only marks it absent (the document shows no
    default): a sent value must still be of the field's type, so a `Count` field sent as null is refused."""
    return Field(default=None, description=description, json_schema_extra=_no_default)


class EventEnvelope(BaseModel):
    """What every event carries, whatever its kind."""

    model_config = ConfigDict(extra="allow", strict=True)

    seq: Count = Field(description="Strictly increasing within a run, across resumes too.")
    time: FiniteNumber = Field(description="Unix seconds.")
    kind: str


class _Progress(EventEnvelope):
    step: Step = _may_be_absent("The training step.")
    total_steps: Step | None = Field(default=None, description="The run's planned steps.")


class StatusEvent(_Progress):
    """The trainer's state; `running` carries the step training (re)starts from."""

    kind: Literal["status"]
    status: RunStatus
    reason: Any = _may_be_absent("Why (a sentence), or null.")


class HeartbeatEvent(_Progress):
    """The training loop lives."""

    kind: Literal["heartbeat"]


class _Series(_Progress):
    step: Step = Field(description="The training step; required for metric, eval and system events.")
    values: dict[SeriesName, FiniteNumber | None] = Field(
        description=f"Series name (1-{MAX_NAME_LEN} chars): number, or null for a value that was not finite.")


class MetricEvent(_Series):
    """Training scalars of one step: loss, lr, logit_scale, acc, similarity, samples_per_s, grad_norm, ..."""

    kind: Literal["metric"]


class EvalEvent(_Series):
    """Validation results: val/loss, val/acc, val/i2t_R@1, ..., val/zeroshot_top1."""

    kind: Literal["eval"]
    batch_size: Any = _may_be_absent("The batch size the retrieval metrics were computed over.")


class SystemEvent(_Series):
    """Host and GPU readings (sys/...) sampled by a thread on rank 0; charted, not summarised."""

    kind: Literal["system"]


class MatrixEvent(_Progress):
    """A similarity matrix of K validation pairs."""

    kind: Literal["matrix"]
    captions: Any = _may_be_absent("[K] captions.")
    thumbnails: Any = _may_be_absent("[K] data:image/jpeg;base64 URIs, 64 px.")
    similarity: Any = _may_be_absent("[K][K] cosine similarities.")
    logit_scale: Any = _may_be_absent("The model's logit scale.")


class CheckpointEvent(_Progress):
    """A checkpoint was written."""

    kind: Literal["checkpoint"]
    path: str = Field(min_length=1, pattern=NO_NUL, description="The checkpoint path relative to the run dir.")
    checkpoint_kind: Any = _may_be_absent("latest, best, wise_ft or final (`kind` is the event's own field).")


class LogEvent(_Progress):
    kind: Literal["log"]
    level: Any = _may_be_absent("info, warning or error.")
    message: Any = _may_be_absent("The log line.")


class DataWarningEvent(_Progress):
    """Images or captions the loader skipped."""

    kind: Literal["data_warning"]
    skipped: Any = _may_be_absent("Skipped in this report.")
    total_skipped: Any = _may_be_absent("Skipped so far in the run.")
    examples: Any = _may_be_absent("[{path, reason}].")
    split: Any = _may_be_absent('"val" for validation images unreadable during an eval; absent for training.')


EVENT_MODELS: dict[str, type[EventEnvelope]] = {
    get_args(model.model_fields["kind"].annotation)[0]: model
    for model in (StatusEvent, HeartbeatEvent, MetricEvent, EvalEvent, MatrixEvent, CheckpointEvent, LogEvent,
                  DataWarningEvent, SystemEvent)
}
EVENT_KINDS = tuple(EVENT_MODELS)
SERIES_KINDS = tuple(kind for kind, model in EVENT_MODELS.items() if issubclass(model, _Series))
Event = Annotated[Union[tuple(EVENT_MODELS.values())], Field(discriminator="kind")]

# The message for each field that can be wrong, phrased as the rule it breaks.
FIELD_RULES = {
    "seq": COUNT_RULE,
    "time": "must be a finite number (unix seconds)",
    "kind": f"must be one of {', '.join(EVENT_KINDS)}",
    "step": STEP_RULE,
    "total_steps": STEP_RULE + " or null",
    "values": "must be an object of name: number",
    "status": f"must be one of {', '.join(RUN_STATUSES)}",
    "path": "must be the checkpoint path relative to the run dir, without NUL characters",
}
VALUE_RULE = f"must be a number or null under a name of 1-{MAX_NAME_LEN} chars without NUL characters"
STEP_REQUIRED = "required for " + ", ".join(SERIES_KINDS[:-1]) + " and " + SERIES_KINDS[-1] + " events"


def envelope_problems(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each of the envelope's fields (seq, time) that break the contract."""
    try:
        EventEnvelope.model_validate(event)
    except ValidationError as exc:
        return [p for p in _problems(exc) if p[0] != "kind"]
    return []


def event_problems(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, message) for each field of `event` that breaks the contract of its kind, [] for a valid one.
    Fields are dotted paths within the event (`seq`, `values.loss`), messages the rule broken."""
    model = EVENT_MODELS.get(event["kind"]) if isinstance(event.get("kind"), str) else None
    if model is None:
        return envelope_problems(event) + [("kind", FIELD_RULES["kind"])]
    try:
        model.model_validate(event)
    except ValidationError as exc:
        return _problems(exc)
    return []


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = error["loc"]
        if loc[0] == "values" and len(loc) > 1:  # one series value, or its name (loc ends with "[key]")
            problem = (f"values.{str(loc[1])[:MAX_NAME_LEN]}", VALUE_RULE)
        elif loc == ("step",) and error["type"] == "missing":
            problem = ("step", STEP_REQUIRED)
        else:
            problem = (str(loc[0]), FIELD_RULES.get(str(loc[0]), error["msg"]))
        if problem not in found:
            found.append(problem)
    return found


def _non_finite(constant: str) -> None:
    """NaN, Infinity, -Infinity (Python's json writes them; JSON has no such values): null, as the writer sends."""
    return None


def _finite_or_none(text: str) -> float | None:
    value = float(text)  # 1e999 reads as inf
    return value if math.isfinite(value) else None


def parse_event_line(raw: bytes | str) -> Any:
    """One line of an events.jsonl as JSON, NaN and infinities read as null; None for a line that is not JSON
    (torn, or with bytes that are not UTF-8). The one reading of a line, for `read_events` and the server's
    backfill."""
    try:
        return json.loads(raw, parse_constant=_non_finite, parse_float=_finite_or_none)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError, or an integer too long for Python to parse
        return None


def read_events(path: str | os.PathLike, after_seq: int = -1) -> Iterator[dict[str, Any]]:
    """Yield the events of an events.jsonl with seq > after_seq; a torn line is skipped, and so is a line
    with bytes that are not UTF-8 (a damaged disk: the writer's JSON is ASCII), which must not stop a resume
    or a sync at that line. NaN and infinities (written by another JSON writer, or a value like 1e999) read as
    null, as cliplab's writer sends them, so the line is kept and the server takes it."""
    p = Path(path)
    if not p.exists():
        return
    with p.open("rb") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            event = parse_event_line(line)  # None for a partial record a writer killed mid-line left
            if isinstance(event, dict) and isinstance(event.get("seq"), int) and event["seq"] > after_seq:
                yield event


def last_seq(path: str | os.PathLike) -> int:
    seq = -1
    for event in read_events(path):
        seq = max(seq, event["seq"])
    return seq
