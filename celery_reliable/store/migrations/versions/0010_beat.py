"""Periodic jobs published once (``reliable_beat_runs``): one row per (entry, due time)
claimed by ``celery_reliable.beat:Scheduler`` before it publishes.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_beat_runs",
        sa.Column("entry", sa.String(255), primary_key=True),
        sa.Column("due_at", sa.DateTime, primary_key=True),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=False),
        sa.Column("claimed_at", sa.DateTime, nullable=False),
        sa.Column("lease_expires_at", sa.DateTime, nullable=True),
        sa.Column("published_at", sa.DateTime, nullable=True),
        sa.Column("publishes", sa.Integer, nullable=False),
        sa.Column("skipped", sa.Integer, nullable=True),
        sa.Column("skipped_from", sa.DateTime, nullable=True),
    )
    # Pruning by age; the claims left by a beat that died, by lease.
    op.create_index("ix_reliable_beat_runs_due_at", "reliable_beat_runs", ["due_at"])
    op.create_index(
        "ix_reliable_beat_runs_state_lease_expires_at",
        "reliable_beat_runs",
        ["state", "lease_expires_at"],
    )


def downgrade() -> None:
    op.drop_table("reliable_beat_runs")
