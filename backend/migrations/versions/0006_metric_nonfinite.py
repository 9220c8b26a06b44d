"""metric_nonfinite: the steps where a series logged NaN or inf (sent as null), for charts that say so

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The null values of stored series events, less those a later `running` status (a resume from a checkpoint at
# a step before theirs) superseded, as ingest would have kept them. The text test first: only the rare event
# holding a null is taken apart as JSON, so the one-off scan of a large events table stays a plain read.
_BACKFILL = {
    "sqlite": """
INSERT INTO metric_nonfinite (run_id, name, step, seq, time)
SELECT e.run_id, j.key, e.step, e.seq, e.time
FROM events e, json_each(e.payload, '$.values') j
WHERE e.kind IN ('metric', 'eval', 'system') AND instr(e.payload, 'null') > 0 AND j.type = 'null'
  AND NOT EXISTS (SELECT 1 FROM events r WHERE r.run_id = e.run_id AND r.kind = 'status' AND r.seq > e.seq
                  AND json_extract(r.payload, '$.status') = 'running' AND r.step < e.step)
""",
    "postgresql": """
INSERT INTO metric_nonfinite (run_id, name, step, seq, time)
SELECT e.run_id, j.key, e.step, e.seq, e.time
FROM events e, json_each(e.payload -> 'values') j
WHERE e.kind IN ('metric', 'eval', 'system') AND strpos(e.payload::text, 'null') > 0
  AND json_typeof(j.value) = 'null'
  AND NOT EXISTS (SELECT 1 FROM events r WHERE r.run_id = e.run_id AND r.kind = 'status' AND r.seq > e.seq
                  AND r.payload ->> 'status' = 'running' AND r.step < e.step)
""",
}


def upgrade() -> None:
    op.create_table(
        "metric_nonfinite",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "name", "step", "seq"),
        sqlite_with_rowid=False,
    )
    backfill = _BACKFILL.get(op.get_bind().dialect.name)
    if backfill:
        op.execute(backfill)


def downgrade() -> None:
    op.drop_table("metric_nonfinite")
