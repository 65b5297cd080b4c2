"""Alembic environment for celery_reliable's own tables.

Run through :func:`celery_reliable.store.migrate.upgrade`, which passes a connection;
the version table is ``reliable_alembic_version`` so it never meets the application's
own Alembic history in a shared database.
"""

from __future__ import annotations

from alembic import context

from celery_reliable.store.schema import VERSION_TABLE, metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called with a connection
    raise RuntimeError("run migrations with celery_reliable.store.migrate.upgrade()")

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
