"""Where a dead letter came from and what became of a retry: ``retry_of`` (the dead
letter whose retry the job was), and indexes to find the dead letter of a retried task
id and the dead letters that came from retrying one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: rows written before it came from no retry anyone recorded,
    # and adding the column rewrites no row (SQLite and PostgreSQL alike).
    op.add_column("reliable_dead_letters", sa.Column("retry_of", sa.Integer, nullable=True))
    op.create_index("ix_reliable_dead_letters_task_id", "reliable_dead_letters", ["task_id"])
    op.create_index("ix_reliable_dead_letters_retry_of", "reliable_dead_letters", ["retry_of"])


def downgrade() -> None:
    op.drop_index("ix_reliable_dead_letters_retry_of", "reliable_dead_letters")
    op.drop_index("ix_reliable_dead_letters_task_id", "reliable_dead_letters")
    with op.batch_alter_table("reliable_dead_letters") as batch:
        batch.drop_column("retry_of")
