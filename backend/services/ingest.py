"""Event ingestion: validate a batch, store it idempotently on (run_id, seq), update the run's summary.

The same write job serves the trainer's HTTP push and the backfill from <run_dir>/events.jsonl, so a
retried batch, a restarted server or an overlap between the two never stores an event twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlmodel import Session

from backend import attempts, store
from backend.errors import Conflict, Invalid
from backend.models import Run
from contract.config import lower_is_better
from contract.events import SERIES_KINDS, envelope_problems, event_problems, parse_event_line
from contract.events import Event as TrainerEvent  # backend.models.Event is the table
from contract.text import lone_surrogate_path

EVENT_BATCH = TypeAdapter(list[TrainerEvent])


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def grant_token(run: Run) -> str:
    """A fresh secret for the run's trainer process; only its hash is stored (set on `run`)."""
    token = secrets.token_urlsafe(32)
    run.token_hash = hash_token(token)
    return token


def token_matches(token: str, token_hash: str | None) -> bool:
    return token_hash is not None and hmac.compare_digest(hash_token(token), token_hash)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strict_json(value: Any) -> bool:
    """Whether `value` is strict JSON, which has no NaN or Infinity (events are stored and streamed as JSON;
    the trainer sends null)."""
    try:
        json.dumps(value, allow_nan=False)
        return True
    except ValueError:
        return False


def event_texts(events: list[Any]) -> list[str] | None:
    """Each event's stored text (store.event_json) when the whole batch is strict JSON whose text UTF-8 can
    carry (no NaN or Infinity, no lone surrogate), else None. One serialisation both checks the batch and
    becomes what is stored, made in the request's thread rather than the single writer's."""
    try:
        texts = [store.event_json(ev) for ev in events]
        "".join(texts).encode("utf-8")  # a lone surrogate cannot be encoded (UnicodeEncodeError, a ValueError)
        return texts
    except ValueError:
        return None


def event_errors(events: list[Any], max_events: int) -> list[dict[str, str]]:
    """Check a batch against the event contract (contract.events' models); returns
    [{"field": "events[3].seq", "message": "must be an integer in 0..9223372036854775807"}]."""
    return _checked(events, max_events)[0]


def checked_event_texts(events: list[Any], max_events: int) -> list[str]:
    """The stored text of each event of a batch that keeps the contract (event_texts); Invalid naming every
    field that breaks it otherwise."""
    errors, texts = _checked(events, max_events)
    if errors:
        raise Invalid(errors)
    return texts if texts is not None else [store.event_json(ev) for ev in events]


def _checked(events: list[Any], max_events: int) -> tuple[list[dict[str, str]], list[str] | None]:
    """(errors, None) for a batch that breaks the contract; ([], its event_texts) for one that keeps it."""
    if len(events) > max_events:
        return [{"field": "events", "message": f"{len(events)} events in one batch; at most {max_events}"}], None
    texts = event_texts(events)
    if texts is not None and _valid_batch(events):
        return [], texts  # the usual batch, checked in one call; the walk below names the culprits of any other
    errors: list[dict[str, str]] = []
    for i, ev in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(ev, dict):
            errors.append({"field": where, "message": "must be an object"})
            continue
        text_problem = None if texts is not None else _text_problem(ev)
        # An event with text JSON cannot carry is named for that; its kind's fields are not checked.
        problems = event_problems(ev) if text_problem is None else envelope_problems(ev) + [text_problem]
        errors.extend({"field": f"{where}.{name}" if name else where, "message": message}
                      for name, message in problems)
    return errors, (None if errors else texts)


def _valid_batch(events: list[Any]) -> bool:
    try:
        EVENT_BATCH.validate_python(events)
        return True
    except ValidationError:
        return False


def _text_problem(ev: dict[str, Any]) -> tuple[str, str] | None:
    """("", message) for a NaN or Infinity anywhere in the event, (path, message) for the first lone
    surrogate (in a line of events.jsonl, which the server's request check never saw), else None."""
    if not _strict_json(ev):
        return "", "contains NaN or Infinity; send null instead"
    bad_text = lone_surrogate_path(ev)
    return None if bad_text is None else (bad_text, "contains a lone UTF-16 surrogate")


@dataclass
class PreparedPoints:
    """A batch's series points and their rollup blocks, made before the single writer runs it, for the usual
    case where every event is new and no stored resume supersedes any; ingest_job checks that it holds."""
    points: list[tuple[str, str, int, int, float, float]]
    blocks: store.RollupBlocks
    nonfinite: list[tuple[str, str, int, int, float]] = field(default_factory=list)


def prepare_points(run_id: str, events: list[dict[str, Any]]) -> PreparedPoints:
    """PreparedPoints of a checked batch (in the request's thread, so the writer only writes)."""
    points, nonfinite = _new_points(run_id, events, [])
    return PreparedPoints(points, store.rollup_blocks((p[1], p[2], p[5]) for p in points), nonfinite)


@dataclass
class IngestOutcome:
    accepted: list[dict[str, Any]] = field(default_factory=list)  # new events, in seq order
    duplicates: int = 0
    run: Run | None = None
    uncharted: list[str] = field(default_factory=list)  # new series names past the run's limit, not stored as series


def _check_seq_window(run: Run, fresh: list[dict[str, Any]], window: int | None) -> None:
    """Conflict when a new seq lies more than `window` past the highest stored one (or one before it in the
    same batch): no trainer writes such a jump, and storing it would freeze the run's summary and streams,
    which follow the highest seq."""
    if window is None:
        return
    high = run.last_seq
    for ev in fresh:  # ascending, so a long contiguous backfill moves the window along with it
        if ev["seq"] > high + window:
            raise Conflict(f"event seq {ev['seq']} is more than {window} past seq {high}, the highest stored or "
                           f"sent before it, of run {run.id!r}; accepted seqs are 0..{high + window} "
                           "(CLIPLAB_MAX_SEQ_AHEAD); nothing of this batch was stored")
        high = max(high, ev["seq"])


def ingest_job(session: Session, run_id: str, events: list[dict[str, Any]], texts: list[str], now: float,
               seq_window: int | None = None, prepared: PreparedPoints | None = None,
               series_limit: int | None = None) -> IngestOutcome:
    """Write job: store the events of `run_id` not stored yet and fold them into the run's summary.

    `events` must have passed `event_errors`; `texts` are their stored texts (event_texts); `prepared`, their
    prepare_points. Runs inside the single writer, so the duplicate check and the insert see the same state.
    A seq beyond `seq_window` past the highest stored raises Conflict and stores nothing of the batch. Series
    names past the run's first `series_limit` are stored in their events only (IngestOutcome.uncharted).
    """
    out = IngestOutcome()
    run = store.get_run(session, run_id)
    if run is None:
        return out
    out.run = run
    by_seq: dict[int, tuple[dict[str, Any], str]] = {}
    for ev, text in zip(events, texts):
        by_seq.setdefault(ev["seq"], (ev, text))
    lo, hi = min(by_seq, default=0), max(by_seq, default=-1)
    stored = store.stored_seqs(session, run_id, lo, hi)
    fresh_seqs = [s for s in sorted(by_seq) if s not in stored]
    fresh = [by_seq[s][0] for s in fresh_seqs]
    out.duplicates = len(events) - len(fresh)
    _check_seq_window(run, fresh, seq_window)
    if any(ev["kind"] != "system" for ev in events):
        run.last_seen = now  # system events come from a thread: they say the process lives, not that it trains
    if not fresh:
        store.save_run(session, run)
        return out
    # An old attempt's events uploaded late (a `cliplab sync` after a failed push) must not bring back the
    # points a stored resume replaced.
    resumes = store.resumes_after(session, run_id, fresh[0]["seq"])
    charted, out.uncharted = _charted_names(run, fresh, series_limit)
    store.add_events(session, run_id, fresh, [by_seq[s][1] for s in fresh_seqs])
    if prepared is not None and not resumes and not out.duplicates and charted is None:  # as prepared
        store.add_points(session, prepared.points, prepared.blocks)
        store.add_nonfinite(session, prepared.nonfinite)
    else:
        points, nonfinite = _new_points(run_id, fresh, resumes, charted)
        store.add_points(session, points)
        store.add_nonfinite(session, nonfinite)
    if _drop_superseded_points(session, run_id, fresh) and run.best:
        run.best = _best_of_stored(session, run)  # the dropped stretch's evals may have held a best value
    _fold_into_run(session, run, fresh, charted)
    store.save_run(session, run)
    out.accepted = fresh
    return out


def _charted_names(run: Run, fresh: list[dict[str, Any]], limit: int | None) -> tuple[set[str] | None, list[str]]:
    """(None, []) while the new events keep the run within `limit` series names; otherwise the names that are
    charted (the run's own, then new ones in order of arrival up to the limit) and the new ones that are not.
    A script logging a name per step (f"loss_{step}") would otherwise grow the run's summary, which every run
    list carries, and the series tables without bound."""
    if limit is None:
        return None, []
    known = set(run.metric_names)
    new: dict[str, None] = {}
    for ev in fresh:
        if ev["kind"] in SERIES_KINDS and not known.issuperset(ev["values"]):
            new.update((name, None) for name in ev["values"] if name not in known)
    room = max(0, limit - len(known))
    if len(new) <= room:
        return None, []
    names = list(new)
    return known.union(names[:room]), names[room:]


def _new_points(run_id: str, fresh: list[dict[str, Any]], resumes: list[tuple[int, int]],
                charted: set[str] | None = None) -> tuple[list[tuple[str, str, int, int, float, float]],
                                                          list[tuple[str, str, int, int, float]]]:
    """The (run_id, name, step, seq, time, value) series points of new events that no stored resume replaced
    (of the `charted` names only, when given), and the (run_id, name, step, seq, time) of their null values
    (NaN or inf where they were measured)."""
    points, nonfinite = [], []
    for ev in fresh:
        if ev["kind"] not in SERIES_KINDS or (resumes and store.superseded(ev, resumes)):
            continue
        step, seq, when, values = ev["step"], ev["seq"], float(ev["time"]), ev["values"]
        points += [(run_id, name, step, seq, when, float(v)) for name, v in values.items()
                   if v is not None and (charted is None or name in charted)]
        if None in values.values():  # rare: one check keeps the usual event off a second walk
            nonfinite += [(run_id, name, step, seq, when) for name, v in values.items()
                          if v is None and (charted is None or name in charted)]
    return points, nonfinite


def _drop_superseded_points(session: Session, run_id: str, fresh: list[dict[str, Any]]) -> int:
    """A run resumed from a checkpoint at step S (after a crash or a kill, or rewound to an older step) logs the
    steps after S again; its `running` status event (which carries S) supersedes the earlier attempt's points
    past S, so each step has one value in the series, the one the surviving weights produced. Returns how many
    points went."""
    return sum(store.drop_points_after(session, run_id, ev["step"], ev["seq"]) for ev in fresh
               if ev["kind"] == "status" and ev.get("status") == "running" and _is_int(ev.get("step")))


def _best_of_stored(session: Session, run: Run) -> dict[str, float]:
    """The run's best eval values over the points still stored: after a resume dropped a stretch, a best that
    only an abandoned step reached (and no checkpoint holds any more) must not rank the run."""
    ranges = store.value_ranges(session, run.id, list(run.best))
    return {name: lo if lower_is_better(name) else hi for name, (lo, hi) in ranges.items()}


def _fold_into_run(session: Session, run: Run, fresh: list[dict[str, Any]], charted: set[str] | None = None) -> None:
    """Update step, status, latest/best values, metric names (the `charted` ones, when given) and checkpoints
    from new events."""
    previous_last = run.last_seq
    latest, best, names = dict(run.latest), dict(run.best), list(run.metric_names)
    known = set(names)
    step, total_steps = run.step, run.total_steps  # set on the row once: ORM attribute sets are slow
    for ev in fresh:
        kind = ev["kind"]
        current = ev["seq"] > previous_last  # an old event backfilled late must not rewind the run
        if kind in SERIES_KINDS:
            values = ev["values"]
            if charted is not None and not charted.issuperset(values):
                values = {name: v for name, v in values.items() if name in charted}
            if not known.issuperset(values):
                new_names = [name for name in values if name not in known]
                known.update(new_names)
                names += new_names
            if kind != "system":  # system series are charted, not run summaries
                _fold_values(values, latest if current else None, best if kind == "eval" else None)
        if kind == "checkpoint":
            _record_checkpoint(session, run.id, ev)
        if not current:
            continue
        if _is_int(ev.get("step")):
            step = ev["step"]
        if _is_int(ev.get("total_steps")):
            total_steps = ev["total_steps"]
        if kind == "status":
            run.trainer_status, run.trainer_reason = ev["status"], column_text(ev.get("reason"))
            if ev["status"] in ("starting", "running") and run.status in ("starting", "running", "lost"):
                run.status = ev["status"]
            elif ev["status"] in ("starting", "running") and run.status == "queued" and run.slurm_job_id:
                # SLURM started the job before the launcher's next poll saw it: the trainer says so first.
                for key, value in attempts.started_fields(run.attempts, run.started_at, float(ev["time"])).items():
                    setattr(run, key, value)
                run.status, run.reason = ev["status"], None
            if run.attached:
                _follow_attached_trainer(run, ev)
    if run.status == "lost" and any(ev["seq"] > previous_last and ev["kind"] != "system" for ev in fresh):
        run.status, run.reason = "running", None  # heard from again
    run.last_seq = max(previous_last, fresh[-1]["seq"])
    run.step, run.total_steps = step, total_steps
    run.latest, run.best, run.metric_names = latest, best, names


def column_text(value: Any) -> Any:
    """A free-text event field as a database column takes it: a NUL (which PostgreSQL's text refuses, failing
    the batch on every retry) becomes U+FFFD; the stored event keeps the text as sent."""
    return value.replace("\0", "\ufffd") if isinstance(value, str) else value


def _fold_values(values: dict[str, float | None], latest: dict[str, float] | None,
                 best: dict[str, float] | None) -> None:
    """Fold one event's values into the run's latest values and, for an eval, its best ones (nulls skipped)."""
    if latest is not None:
        latest.update({name: v for name, v in values.items() if v is not None})
    if best is not None:
        for name, v in values.items():
            if v is not None:
                better = min if lower_is_better(name) else max
                best[name] = v if name not in best else better(best[name], v)


def _follow_attached_trainer(run: Run, ev: dict[str, Any]) -> None:
    """An attached run has no process here to watch: its state is what its trainer reports (a resume by hand
    brings a stopped run back to `starting`; a stop request holds `stopping` until the trainer ends)."""
    status, when = ev["status"], float(ev["time"])
    if status in ("stopped", "finished", "failed"):
        run.status, run.reason, run.finished_at, run.stop_requested = status, column_text(ev.get("reason")), when, False
        run.attempts = attempts.closed(run.attempts, when, status, run.reason, None)
    elif run.status != "stopping":
        if status == "starting" or run.status in ("stopped", "finished", "failed"):
            run.finished_at, run.reason = None, None
        # An attempt opens at the trainer's first word, `running` too: an events file from elsewhere (uploaded by
        # `cliplab sync`) may lack the `starting` line, and the run still started. The run's first start stays.
        if not run.attempts or run.attempts[-1].get("ended_at") is not None:
            run.attempts = attempts.opened(run.attempts, when)
        run.started_at = when if run.started_at is None else run.started_at
        run.status = status


def _record_checkpoint(session: Session, run_id: str, ev: dict[str, Any]) -> None:
    store.record_checkpoint(session, run_id, Path(ev["path"]).name, step=ev.get("step") or 0,
                            kind=column_text(str(ev.get("checkpoint_kind") or "latest")),  # the envelope's is `kind`
                            path=ev["path"], when=float(ev["time"]))


@dataclass
class FileLine:
    number: int  # 1-based line number in events.jsonl
    event: Any  # the parsed JSON, or None for a line that is not JSON (torn by a killed writer)


class EventFileTail:
    """Reads the lines appended to each run's events.jsonl since the last call (byte offsets in memory).

    A partial last line (the trainer is mid-write) is left for the next call. After a server restart the
    offsets start at 0, so the first read backfills the whole file; the idempotent ingest drops what the
    database already has.
    """

    def __init__(self) -> None:
        self._offsets: dict[str, int] = {}
        self._lines: dict[str, int] = {}  # complete lines read so far, for line numbers in warnings

    def read_new(self, run_id: str, path: Path, max_bytes: int = 64 * 2**20) -> list[FileLine]:
        """The complete, non-blank lines appended since the last call (in chunks of at most max_bytes)."""
        offset = self._offsets.get(run_id, 0)
        try:
            size = path.stat().st_size
        except OSError:
            return []
        if size < offset:
            offset = 0  # the file was replaced
        if size == offset:
            return []
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read(max_bytes)
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        first = self._lines.get(run_id, 0) if offset else 0
        raw_lines = chunk[:end].split(b"\n")
        self._offsets[run_id] = offset + end + 1
        self._lines[run_id] = first + len(raw_lines)
        return [FileLine(first + i + 1, parse_event_line(raw)) for i, raw in enumerate(raw_lines) if raw.strip()]

    def forget(self, run_id: str) -> None:
        self._offsets.pop(run_id, None)
        self._lines.pop(run_id, None)


def valid_file_events(lines: list[FileLine]) -> tuple[list[dict[str, Any]], list[str]]:
    """Split a file backfill into the events that satisfy the contract and a note on each line skipped
    (one bad line must not block the lines after it)."""
    valid: list[dict[str, Any]] = []
    skipped: list[str] = []
    for line in lines:
        if not isinstance(line.event, dict):
            skipped.append(f"line {line.number}: not a JSON object")
            continue
        errors = event_errors([line.event], 1)
        if errors:
            first = errors[0]
            field = first["field"].replace("events[0]", "event", 1)
            skipped.append(f"line {line.number}: {field} {first['message']}")
        else:
            valid.append(line.event)
    return valid, skipped
