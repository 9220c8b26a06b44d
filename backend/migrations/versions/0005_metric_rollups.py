"""metric_rollups: min/max/last step of each series over aligned blocks, for fast charts of long series

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BLOCK, LEVELS = 16, 5  # as backend/services/rollups.py at this revision


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("level", sa.SmallInteger(), nullable=False),
        sa.Column("block_start", sa.BigInteger(), nullable=False),
        sa.Column("vmin", sa.Float(), nullable=False),
        sa.Column("vmax", sa.Float(), nullable=False),
        sa.Column("last_step", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "name", "level", "block_start"),
        sqlite_with_rowid=False,
    )
    # The series stored so far, level 1 from the points and each coarser level from the one below.
    op.execute(f"INSERT INTO metric_rollups SELECT run_id, name, 1, (step / {BLOCK}) * {BLOCK}, MIN(value), "
               f"MAX(value), MAX(step) FROM metric_points GROUP BY run_id, name, step / {BLOCK}")
    for level in range(2, LEVELS + 1):
        size = BLOCK ** level
        op.execute(f"INSERT INTO metric_rollups SELECT run_id, name, {level}, (block_start / {size}) * {size}, "
                   f"MIN(vmin), MAX(vmax), MAX(last_step) FROM metric_rollups WHERE level = {level - 1} "
                   f"GROUP BY run_id, name, block_start / {size}")


def downgrade() -> None:
    op.drop_table("metric_rollups")
