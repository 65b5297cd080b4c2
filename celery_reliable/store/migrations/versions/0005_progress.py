"""The last heartbeat of each running execution: ``reliable_progress``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_progress",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=True),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("beat_at", sa.DateTime, nullable=False),
        sa.Column("progress", sa.Float, nullable=True),
        sa.Column("details", sa.Text, nullable=True),
    )
    op.create_index("ix_reliable_progress_beat_at", "reliable_progress", ["beat_at"])


def downgrade() -> None:
    op.drop_index("ix_reliable_progress_beat_at", "reliable_progress")
    op.drop_table("reliable_progress")
