"""Waits that follow the real turnover: the pace of a limit's takes
(``reliable_limit_keys``: ``take_gap_ms``, ``last_take_ms``, ``refused_ms``), from
when a waiter keeps a free slot (``reliable_limit_waiters.keep_ms``) and the line in
order (an index on ``reliable_limit_waiters``: key, place).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: a key with no pace yet waits by the ideal turnover, as it
    # did before, a waiter with no keep_ms keeps a slot once due, and adding them
    # rewrites no row (SQLite and PostgreSQL alike).
    op.add_column("reliable_limit_keys", sa.Column("take_gap_ms", sa.Float, nullable=True))
    op.add_column("reliable_limit_keys", sa.Column("last_take_ms", sa.BigInteger, nullable=True))
    op.add_column("reliable_limit_keys", sa.Column("refused_ms", sa.BigInteger, nullable=True))
    op.add_column("reliable_limit_waiters", sa.Column("keep_ms", sa.BigInteger, nullable=True))
    op.create_index(
        "ix_reliable_limit_waiters_key_line_us", "reliable_limit_waiters", ["key", "line_us"]
    )


def downgrade() -> None:
    op.drop_index("ix_reliable_limit_waiters_key_line_us", "reliable_limit_waiters")
    with op.batch_alter_table("reliable_limit_waiters") as batch:
        batch.drop_column("keep_ms")
    with op.batch_alter_table("reliable_limit_keys") as batch:
        batch.drop_column("refused_ms")
        batch.drop_column("last_take_ms")
        batch.drop_column("take_gap_ms")
