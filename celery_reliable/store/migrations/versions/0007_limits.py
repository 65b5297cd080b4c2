"""Global limits kept in the store: ``reliable_limit_keys``, ``reliable_limit_slots``,
``reliable_limit_waiters`` (``reliable_limits_url = "store"``).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reliable_limit_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("mean_hold_ms", sa.Float, nullable=True),
        sa.Column("touched_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_reliable_limit_keys_touched_ms", "reliable_limit_keys", ["touched_ms"])
    op.create_table(
        "reliable_limit_slots",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("token", sa.String(255), primary_key=True),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("until_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_reliable_limit_slots_key_until_ms", "reliable_limit_slots", ["key", "until_ms"]
    )
    op.create_table(
        "reliable_limit_waiters",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("job", sa.String(255), primary_key=True),
        sa.Column("line_us", sa.BigInteger, nullable=False),
        sa.Column("forget_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("reliable_limit_waiters")
    op.drop_index("ix_reliable_limit_slots_key_until_ms", "reliable_limit_slots")
    op.drop_table("reliable_limit_slots")
    op.drop_index("ix_reliable_limit_keys_touched_ms", "reliable_limit_keys")
    op.drop_table("reliable_limit_keys")
