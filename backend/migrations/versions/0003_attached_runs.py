"""attached runs: runs registered by a trainer started outside the server (`cliplab train --server`)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN: batch mode would rebuild `runs` on SQLite, and dropping the old table cascades to
    # every run's metric points and events (foreign keys are on).
    op.add_column("runs", sa.Column("attached", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column("runs", sa.Column("attached_host", sa.String(255), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "attached_host")  # in place, as the upgrade adds them (SQLite 3.35+)
    op.drop_column("runs", "attached")
