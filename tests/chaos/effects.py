"""The chaos suite's tables: one row per execution that wrote its effect, the
``outbox`` mode's committed jobs, and the ``batches`` mode's callbacks."""

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
#: The ``outbox`` mode's application table: the row a publisher's transaction writes
#: beside its outbox message, so that a job's transaction committed if, and only if,
#: its row is here (``tests/chaos/publisher.py``).
jobs = sa.Table(
    "chaos_jobs",
    metadata,
    sa.Column("job_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("publisher", sa.Integer, nullable=False, index=True),
    sa.Column("task_id", sa.String(64), nullable=False),
    sa.Column("committed_at", sa.Float, nullable=False),
)
#: The ``batches`` mode's callbacks: one row per ``on_complete`` body that ran to its
#: end (written through ``self.atomic()``, so a second run of one callback's message
#: cannot add a second row; two rows for one batch are two callbacks fired).
callbacks = sa.Table(
    "chaos_batch_callbacks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.String(64), nullable=False, index=True),
    sa.Column("task_id", sa.String(128), nullable=False),
    sa.Column("summary", sa.Text, nullable=False),
    sa.Column("done_at", sa.Float, nullable=False),
)
