"""The transactional outbox (``reliable_outbox``): messages written by ``publish_in`` in
the caller's transaction, published by a relay.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("task_id", sa.String(255), nullable=False),
        sa.Column("task_name", sa.String(255), nullable=False),
        sa.Column("exchange", sa.String(255), nullable=False),
        sa.Column("routing_key", sa.String(255), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("content_type", sa.String(255), nullable=False),
        sa.Column("content_encoding", sa.String(64), nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("properties", sa.Text, nullable=False),
        sa.Column("declare", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        # ids never reused: id order is the order rows were written in.
        sqlite_autoincrement=True,
    )


def downgrade() -> None:
    op.drop_table("reliable_outbox")
