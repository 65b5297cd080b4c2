"""Batches (``celery_reliable.Batch``): one row per batch with its per-outcome counts
(``reliable_batches``), one per member with its ending (``reliable_batch_members``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

COUNTS = ("done", "succeeded", "duplicate", "cancelled", "discarded", "exhausted", "failed")


def upgrade() -> None:
    op.create_table(
        "reliable_batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=True),
        *(sa.Column(name, sa.Integer, nullable=False, server_default="0") for name in COUNTS),
        sa.Column("on_complete", sa.Text, nullable=True),
        sa.Column("on_success", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("sealed_at", sa.DateTime, nullable=True),
        sa.Column("completed_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_reliable_batches_created_at", "reliable_batches", ["created_at"])
    op.create_index("ix_reliable_batches_completed_at", "reliable_batches", ["completed_at"])
    op.create_table(
        "reliable_batch_members",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("task_name", sa.String(255), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("ended_at", sa.DateTime, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("reliable_batch_members")
    op.drop_index("ix_reliable_batches_completed_at", "reliable_batches")
    op.drop_index("ix_reliable_batches_created_at", "reliable_batches")
    op.drop_table("reliable_batches")
