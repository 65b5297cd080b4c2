"""A table of side effects, written through ``self.atomic()`` by the test tasks."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
effects = sa.Table(
    "effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("amount", sa.Integer, nullable=False),
    sa.Column("task_id", sa.String(64), nullable=False),
)
