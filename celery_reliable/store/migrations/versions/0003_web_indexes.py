"""Indexes for the web view: dead letters newest first by task or outcome, those not
retried yet by task (a partial index), receipts by state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_reliable_dead_letters_task_name_id", "reliable_dead_letters", ["task_name", "id"]
    )
    op.create_index(
        "ix_reliable_dead_letters_outcome_id", "reliable_dead_letters", ["outcome", "id"]
    )
    op.create_index(
        "ix_reliable_dead_letters_pending_task_name_id",
        "reliable_dead_letters",
        ["task_name", "id"],
        sqlite_where=sa.text("retried_at IS NULL"),
        postgresql_where=sa.text("retried_at IS NULL"),
    )
    op.create_index(
        "ix_reliable_receipts_state_task_name_key",
        "reliable_receipts",
        ["state", "task_name", "key"],
    )


def downgrade() -> None:
    op.drop_index("ix_reliable_receipts_state_task_name_key", "reliable_receipts")
    op.drop_index("ix_reliable_dead_letters_pending_task_name_id", "reliable_dead_letters")
    op.drop_index("ix_reliable_dead_letters_outcome_id", "reliable_dead_letters")
    op.drop_index("ix_reliable_dead_letters_task_name_id", "reliable_dead_letters")
