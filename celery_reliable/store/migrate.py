"""Applying the shipped Alembic migrations (``celery -A proj reliable db upgrade``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from celery_reliable.store.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

#: PostgreSQL advisory lock id that serialises concurrent upgrades ("reliabl" in hex).
_LOCK_KEY = 0x72656C6961626C


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic says "Context impl SQLiteImpl." and more at INFO each time a worker (and
    every pool child) checks the schema: heard only when the user set a level on the
    ``alembic`` logger themselves."""
    log = logging.getLogger("alembic")
    if log.level != logging.NOTSET:
        yield
        return
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(logging.NOTSET)


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    assert revision is not None
    return revision


def current(engine: Engine) -> str | None:
    with _quiet_alembic(), engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade to ``revision``; returns (before, after). Safe to run concurrently:
    the whole upgrade is one transaction that first takes a lock (SQLite: the write
    lock, by BEGIN IMMEDIATE; PostgreSQL: a transaction-level advisory lock), so a
    second deploy waits for the first and then finds nothing left to do."""
    config = _config()
    with _quiet_alembic(), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        before = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        after = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE}
        ).get_current_revision()
    assert after is not None
    return before, after


def upgrade_in(connection: Connection) -> None:
    """Upgrade to head inside the caller's own open transaction (on SQLite, one that
    already holds the write lock, which no other connection could take): the schema
    commits, or rolls back, with it."""
    config = _config()
    config.attributes["connection"] = connection
    with _quiet_alembic():
        command.upgrade(config, "head")


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Downgrade to ``revision`` (``base``: drop every table of the store), under the
    same lock as :func:`upgrade`."""
    config = _config()
    with _quiet_alembic(), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
