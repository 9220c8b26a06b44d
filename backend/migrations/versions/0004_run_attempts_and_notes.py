"""run attempts (each launch: start, end, how it ended) and notes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("attempts", sa.JSON(), nullable=False, server_default=sa.text("'[]'")))
    op.add_column("runs", sa.Column("notes", sa.Text(), nullable=False, server_default=""))
    # Runs recorded before attempts were kept get one attempt from their start and finish times.
    conn = op.get_bind()
    update = sa.text("UPDATE runs SET attempts = :attempts WHERE id = :id").bindparams(
        sa.bindparam("attempts", type_=sa.JSON()))
    rows = conn.execute(sa.text(
        "SELECT id, status, reason, exit_code, started_at, finished_at FROM runs WHERE started_at IS NOT NULL")).all()
    for run_id, status, reason, exit_code, started_at, finished_at in rows:
        ended = status in ("stopped", "finished", "failed")
        attempt = {"started_at": started_at, "ended_at": finished_at if ended else None,
                   "status": status if ended else None, "reason": reason if ended else None,
                   "exit_code": exit_code if ended else None}
        conn.execute(update, {"attempts": [attempt], "id": run_id})


def downgrade() -> None:
    # In place, not batch mode: rebuilding `runs` on SQLite would cascade to its events and points.
    op.drop_column("runs", "attempts")
    op.drop_column("runs", "notes")
