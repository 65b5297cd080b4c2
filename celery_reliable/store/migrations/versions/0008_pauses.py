"""Paused queues and tasks (``reliable_pauses``).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_pauses",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("paused_by", sa.String(255), nullable=True),
        sa.Column("paused_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reliable_pauses")
