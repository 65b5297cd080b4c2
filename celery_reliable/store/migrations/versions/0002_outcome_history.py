"""Outcome history: executions per task, minute, queue and outcome.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

#: As in store/schema.py at this revision (a migration never imports the live schema).
_BUCKETS = (
    "under_10ms",
    "under_50ms",
    "under_100ms",
    "under_500ms",
    "under_1s",
    "under_5s",
    "under_30s",
    "under_1m",
    "under_5m",
    "over_5m",
)


def upgrade() -> None:
    op.create_table(
        "reliable_outcome_history",
        sa.Column("task_name", sa.String(255), primary_key=True),
        sa.Column("minute", sa.DateTime, primary_key=True),
        sa.Column("queue", sa.String(255), primary_key=True),
        sa.Column("outcome", sa.String(16), primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("duration_count", sa.Integer, nullable=False),
        sa.Column("duration_sum", sa.Float, nullable=False),
        sa.Column("duration_max", sa.Float, nullable=False),
        *(sa.Column(name, sa.Integer, nullable=False) for name in _BUCKETS),
    )
    op.create_index("ix_reliable_outcome_history_minute", "reliable_outcome_history", ["minute"])


def downgrade() -> None:
    op.drop_table("reliable_outcome_history")
