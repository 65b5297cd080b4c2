"""Receipts, dead letters and unique-enqueue locks.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_receipts",
        sa.Column("task_name", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("payload_hash", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("claim_token", sa.String(32), nullable=False),
        sa.Column("claims", sa.Integer, nullable=False),
        sa.Column("lease_expires_at", sa.DateTime, nullable=True),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("completed_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_reliable_receipts_completed_at", "reliable_receipts", ["completed_at"])
    op.create_index(
        "ix_reliable_receipts_lease_expires_at", "reliable_receipts", ["lease_expires_at"]
    )
    op.create_table(
        "reliable_dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("queue", sa.String(255), nullable=True),
        sa.Column("args", sa.Text, nullable=True),
        sa.Column("kwargs", sa.Text, nullable=True),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("redacted", sa.Boolean, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("exc_type", sa.String(255), nullable=True),
        sa.Column("exc_message", sa.Text, nullable=True),
        sa.Column("traceback", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("retried_at", sa.DateTime, nullable=True),
        sa.Column("retried_task_id", sa.String(255), nullable=True),
    )
    op.create_index(
        "ix_reliable_dead_letters_task_name_created_at",
        "reliable_dead_letters",
        ["task_name", "created_at"],
    )
    op.create_index("ix_reliable_dead_letters_created_at", "reliable_dead_letters", ["created_at"])
    op.create_table(
        "reliable_unique_locks",
        sa.Column("task_name", sa.String(255), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_reliable_unique_locks_expires_at", "reliable_unique_locks", ["expires_at"])


def downgrade() -> None:
    op.drop_table("reliable_unique_locks")
    op.drop_table("reliable_dead_letters")
    op.drop_table("reliable_receipts")
