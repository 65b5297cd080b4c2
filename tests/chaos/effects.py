"""The chaos suite's effect table: one row per execution that wrote its effect."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
effects = sa.Table(
    "chaos_effects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.Integer, nullable=False, index=True),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("published_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float, nullable=False),
)
