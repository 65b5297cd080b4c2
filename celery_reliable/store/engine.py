"""Engines for the store: SQLite (the embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout and takes the write lock at BEGIN
(``BEGIN IMMEDIATE``): a read-then-write transaction under concurrency would otherwise
fail with "database is locked" instead of waiting its turn.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from celery.exceptions import ImproperlyConfigured
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    NoSuchTableError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.pool import StaticPool

from celery_reliable.errors import MissingDependency, StoreUnavailable

SUPPORTED = ("sqlite", "postgresql")

_T = TypeVar("_T")

#: Seconds a connection attempt may take before the store counts as unreachable.
CONNECT_TIMEOUT = 5

#: Seconds a SQLite statement waits for another process's write lock.
SQLITE_BUSY_TIMEOUT = 30.0


def create_store_engine(url: str) -> Engine:
    """The store's engine; ``ImproperlyConfigured`` for a URL that cannot work, and
    ``MissingDependency`` for a driver that is not installed (no connection is made)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ImproperlyConfigured(
            f"reliable_database_url {url!r} is not a database URL ({exc}); "
            "write sqlite:///path or postgresql+psycopg://user@host/db"
        ) from exc
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED:
        raise ImproperlyConfigured(
            f"reliable_database_url {parsed.render_as_string(hide_password=True)!r}: "
            f"celery_reliable stores to SQLite or PostgreSQL, not {backend}"
        )
    if backend == "sqlite":
        return _sqlite_engine(url, in_memory=parsed.database in (None, "", ":memory:"))
    parsed = _postgresql_driver(parsed)
    # No pool_pre_ping: it would add a round trip to every statement. A connection
    # that went stale (the server restarted) fails once and is retried at once on a new
    # one by run_statement().
    try:
        return create_engine(
            parsed,
            pool_size=5,
            max_overflow=10,
            pool_recycle=1800,
            connect_args={"connect_timeout": CONNECT_TIMEOUT},
        )
    except ModuleNotFoundError as exc:
        module = (exc.name or "its driver").split(".")[0]
        feature = f"reliable_database_url ({parsed.drivername})"
        if module == "psycopg":
            raise MissingDependency(feature, module, extra="postgres") from exc
        raise MissingDependency(
            feature,
            module,
            install=f"pip install {module}, or use postgresql+psycopg:// with "
            "pip install 'celery-reliable[postgres]'",
        ) from exc


#: PostgreSQL drivers SQLAlchemy knows, by module, in the order a bare
#: ``postgresql://`` URL tries them: SQLAlchemy's default first, then the one the
#: ``postgres`` extra installs.
_POSTGRESQL_DRIVERS = (("psycopg2", "postgresql+psycopg2"), ("psycopg", "postgresql+psycopg"))


def _postgresql_driver(url: URL) -> URL:
    """A ``postgresql://`` URL without a driver uses whichever driver is installed."""
    if url.drivername != "postgresql":
        return url
    for module, drivername in _POSTGRESQL_DRIVERS:
        if importlib.util.find_spec(module) is not None:
            return url.set(drivername=drivername)
    raise MissingDependency("reliable_database_url (PostgreSQL)", "psycopg", extra="postgres")


def single_statement_engine(engine: Engine) -> Engine:
    """For statements that are atomic on their own: PostgreSQL runs them in autocommit,
    so each is one round trip (no BEGIN, no COMMIT). SQLite keeps its BEGIN IMMEDIATE:
    it is local, and its transactions are what make concurrent writers wait."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def rowcount(result: Any) -> int:
    return int(result.rowcount)


def first_row(result: Any) -> Any:
    return result.first()


def run_statement(
    engine: Engine,
    what: str,
    statement: Any,
    params: Any,
    read: Callable[[Any], _T],
) -> _T:
    """Execute one statement and ``read`` its result; a connection found stale (the
    server restarted) is replaced and the statement run once more. A database that
    cannot be reached raises :class:`StoreUnavailable`."""
    with unavailable_as(what):
        for attempt in (1, 2):
            try:
                with engine.begin() as connection:
                    return read(connection.execute(statement, params))
            except DBAPIError as exc:
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _sqlite_engine(url: str, in_memory: bool) -> Engine:
    if in_memory:
        # One connection shared by every thread: each new connection to ":memory:"
        # would be an empty database of its own.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT, "check_same_thread": False}
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN, not pysqlite.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
        if not in_memory:
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _enable_wal(cursor: Any) -> None:
    """WAL mode is kept in the file, so only a new database needs switching. The switch
    takes an exclusive lock and SQLite answers "locked" at once, without its busy
    handler, while another connection writes: so wait here, as the busy timeout would.
    """
    if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def unavailable_as(what: str) -> Iterator[None]:
    """Turn "cannot reach the database" errors into :class:`StoreUnavailable`."""
    try:
        yield
    except (OperationalError, ProgrammingError, NoSuchTableError) as exc:
        raise StoreUnavailable(f"{what}: {_short(exc)}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise StoreUnavailable(f"{what}: {_short(exc)}") from exc
        raise


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
