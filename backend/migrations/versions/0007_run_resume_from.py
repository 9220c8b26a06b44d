"""runs.resume_from: the step directory a resume continues from when one was picked (null: latest)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("resume_from", sa.String(200), nullable=True))


def downgrade() -> None:
    # In place, not batch mode: rebuilding `runs` on SQLite would cascade to its events and points.
    op.drop_column("runs", "resume_from")
