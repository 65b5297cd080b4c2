"""Persistent cancels (``reliable_cancels``) and resumable steps (``reliable_steps``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_cancels",
        sa.Column("task_id", sa.String(255), primary_key=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("requested_by", sa.String(255), nullable=True),
        sa.Column("requested_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_reliable_cancels_requested_at", "reliable_cancels", ["requested_at"])
    op.create_table(
        "reliable_steps",
        sa.Column("task_name", sa.String(255), primary_key=True),
        sa.Column("job", sa.String(255), primary_key=True),
        sa.Column("step", sa.String(255), primary_key=True),
        sa.Column("cursor", sa.Text, nullable=True),
        sa.Column("advances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
    )
    op.create_index("ix_reliable_steps_updated_at", "reliable_steps", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_reliable_steps_updated_at", "reliable_steps")
    op.drop_table("reliable_steps")
    op.drop_index("ix_reliable_cancels_requested_at", "reliable_cancels")
    op.drop_table("reliable_cancels")
