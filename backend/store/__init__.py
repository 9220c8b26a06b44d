"""Every database query of the server, as plain functions taking a `Session` first (`store.get_run(s, id)`).

Services hold the logic and call these inside `read(engine, fn)` or a `DbWriter` job (backend/db.py); no
other module builds a query. One module per table or concern:

- runs.py: run rows (get, save, edit, delete, by state, the filtered run list) and their checkpoints;
- events.py: the events a trainer sent;
- series.py: metric points, the bucketed series reads and the keyset pages of a whole series (CSV export);
- rollups.py: the multi-resolution rollups kept in step with the points;
- bulk.py: bulk inserts for the ingest hot path (many-row statements on SQLite).
"""

from backend.store.events import (
    add_events,
    event_json,
    events_after,
    events_of_kind,
    events_of_kind_after,
    last_status_event,
    matrix_at,
    matrix_steps,
    resumes_after,
    stored_seqs,
    superseded,
)
from backend.store.rollups import Blocks as RollupBlocks
from backend.store.rollups import blocks_of as rollup_blocks
from backend.store.runs import (
    active_launched_runs,
    checkpoints_of,
    delete_run,
    edit_run,
    get_run,
    launched_run_in_dir,
    new_run_id,
    queued_unsubmitted_runs,
    record_checkpoint,
    run_holding_token,
    run_page,
    run_token_hash,
    runs_in_status,
    save_run,
    silent_attached_runs,
    unused_run_id,
    watched_launched_runs,
)
from backend.store.series import (
    add_nonfinite,
    add_points,
    drop_points_after,
    series_buckets,
    series_nonfinite,
    series_points,
    series_rows_after,
    series_step_range,
    value_ranges,
)

__all__ = [
    "active_launched_runs", "add_events", "add_nonfinite", "add_points", "checkpoints_of", "delete_run",
    "drop_points_after", "edit_run", "event_json", "events_after", "events_of_kind", "events_of_kind_after",
    "get_run", "last_status_event", "launched_run_in_dir", "matrix_at", "matrix_steps", "new_run_id",
    "queued_unsubmitted_runs", "record_checkpoint", "resumes_after", "rollup_blocks", "RollupBlocks", "run_page",
    "run_holding_token", "run_token_hash", "runs_in_status", "save_run", "series_buckets", "series_nonfinite",
    "series_points", "series_rows_after", "series_step_range", "silent_attached_runs", "stored_seqs", "superseded",
    "unused_run_id", "value_ranges", "watched_launched_runs",
]
