"""runs: the executor a run trains on, and its SLURM job (request, job id, partition, node list)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: batch mode would rebuild `runs` on SQLite, and dropping the old table cascades to
    # every run's metric points and events (foreign keys are on).
    op.add_column("runs", sa.Column("executor", sa.String(32), nullable=False, server_default="local"))
    op.add_column("runs", sa.Column("slurm", sa.JSON(), nullable=False, server_default="{}"))
    op.add_column("runs", sa.Column("slurm_job_id", sa.String(32), nullable=True))
    op.add_column("runs", sa.Column("slurm_partition", sa.String(64), nullable=True))
    op.add_column("runs", sa.Column("slurm_nodelist", sa.String(), nullable=True))


def downgrade() -> None:
    for name in ("slurm_nodelist", "slurm_partition", "slurm_job_id", "slurm", "executor"):
        op.drop_column("runs", name)  # in place, as the upgrade adds them (SQLite 3.35+)
