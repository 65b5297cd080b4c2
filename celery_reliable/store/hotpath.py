"""The receipt statements of every keyed execution, on plain DB-API connections.

A keyed execution claims its key before the body and completes (or releases) it
after: two statements on the hot path of every worker. Through SQLAlchemy each paid
for a pool checkout, a ``BEGIN``/``COMMIT`` pair on SQLite, and the Core execution
machinery; measured in situ they cost several times the statement itself. Here the
same statements, compiled once by SQLAlchemy for the store's dialect (so the SQL
cannot drift from the schema and the rest of the store), run on one DB-API
connection per thread, in autocommit: one statement, one round trip, each atomic on
its own.

On PostgreSQL the claims (and releases) are written on a second connection with
``synchronous_commit = off``: they do not wait for the WAL flush. That is safe: a
claim lost in a database crash only lets another execution take the key, which
``atomic()`` already fences (its receipt update finds the claim gone and raises
``LeaseLost``); and a completion, which does wait for the flush, also flushes every
claim written before it.

The atomic() path (``Receipts.complete_in``), reads and maintenance stay on
SQLAlchemy. An in-memory SQLite store (one connection shared through SQLAlchemy) has
no hot path.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from celery_reliable.errors import StoreUnavailable

logger = logging.getLogger("celery_reliable.store")

_T = TypeVar("_T")

#: How SQLAlchemy stores a DateTime on SQLite (text that sorts as time does).
SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


class Statement:
    """One SQLAlchemy statement compiled for a dialect, with its literal binds."""

    __slots__ = ("literals", "names", "positional", "sql", "sqlite")

    def __init__(self, statement: Any, engine: Engine) -> None:
        compiled = statement.compile(dialect=engine.dialect)
        self.sql: str = str(compiled)
        self.literals: dict[str, Any] = {
            k: v for k, v in compiled.params.items() if not k.startswith("p_")
        }
        self.positional = engine.dialect.paramstyle in ("qmark", "numeric", "format")
        self.names: Sequence[str] = tuple(compiled.positiontup or ())
        self.sqlite = engine.dialect.name == "sqlite"

    def params(self, values: dict[str, Any]) -> Any:
        merged = {**self.literals, **values}
        if self.sqlite:
            merged = {
                k: v.strftime(SQLITE_DATETIME) if isinstance(v, datetime) else v
                for k, v in merged.items()
            }
        if self.positional:
            return [merged[name] for name in self.names]
        return merged


class HotPath:
    """DB-API connections for the receipt statements (see the module), kept in two
    small stacks (relaxed, durable): a statement takes one, or opens one, and gives it
    back; at most ``MAX_IDLE`` of each stay open between statements."""

    MAX_IDLE = 4
    #: Connections of each stack open at once (like the engine's pool: 5 + 10); a
    #: statement beyond waits up to ``WAIT`` seconds for one.
    MAX_OPEN = 15
    WAIT = 30.0

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect.name
        self._connect_args = engine.dialect.create_connect_args(engine.url)
        self._idle: dict[bool, list[Any]] = {True: [], False: []}
        self._open = {flag: threading.BoundedSemaphore(self.MAX_OPEN) for flag in (True, False)}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @classmethod
    def for_engine(cls, engine: Engine) -> HotPath | None:
        if engine.dialect.name == "sqlite":
            database = engine.url.database
            if not database or database == ":memory:" or "mode=memory" in database:
                return None
            return cls(engine)
        if engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
            return cls(engine)
        return None  # another driver: the SQLAlchemy path

    # -- connections -------------------------------------------------------------------

    def _connect(self, relaxed: bool) -> Any:
        cargs, cparams = self._connect_args
        if self.dialect == "sqlite":
            from celery_reliable.store.engine import SQLITE_BUSY_TIMEOUT

            options: dict[str, Any] = {
                **cparams,
                "timeout": SQLITE_BUSY_TIMEOUT,
                "isolation_level": None,  # autocommit: each statement is atomic alone
                "check_same_thread": False,
            }
            connect: Callable[..., Any] = sqlite3.connect
            connection = connect(*cargs, **options)
            connection.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT * 1000)}")
            connection.execute("PRAGMA synchronous=NORMAL")
            return connection
        import psycopg

        from celery_reliable.store.engine import CONNECT_TIMEOUT

        options = {"connect_timeout": CONNECT_TIMEOUT, **cparams, "autocommit": True}
        connection = psycopg.connect(*cargs, **options)
        if relaxed:
            connection.execute("SET synchronous_commit TO off")
        return connection

    def _take(self, relaxed: bool) -> Any:
        relaxed = relaxed and self.dialect == "postgresql"
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's sockets are not ours
                self._idle, self._pid = {True: [], False: []}, os.getpid()
                self._open = {
                    flag: threading.BoundedSemaphore(self.MAX_OPEN) for flag in (True, False)
                }
            opened = self._open[relaxed]
        if not opened.acquire(timeout=self.WAIT):
            raise StoreUnavailable(
                f"all {self.MAX_OPEN} receipt connections busy for {self.WAIT:g} s"
            )
        with self._lock:
            idle = self._idle[relaxed]
            if idle:
                return idle.pop()
        try:
            return self._connect(relaxed)
        except BaseException:
            opened.release()
            raise

    def _give_back(self, relaxed: bool, connection: Any) -> None:
        relaxed = relaxed and self.dialect == "postgresql"
        with self._lock:
            idle = self._idle[relaxed]
            mine = self._pid == os.getpid()
            if mine and len(idle) < self.MAX_IDLE:
                idle.append(connection)
                self._open[relaxed].release()
                return
        _close(connection)
        if mine:
            self._open[relaxed].release()

    def _discard(self, relaxed: bool, connection: Any) -> None:
        """A broken connection: close it and every idle one of its stack (a server
        that restarted dropped them all)."""
        relaxed = relaxed and self.dialect == "postgresql"
        with self._lock:
            idle, self._idle[relaxed] = self._idle[relaxed], []
            mine = self._pid == os.getpid()
        for other in [connection, *idle]:
            _close(other)
        if mine:
            self._open[relaxed].release()

    def close(self) -> None:
        """Close the idle connections (the store is disposed)."""
        with self._lock:
            idle, self._idle = self._idle, {True: [], False: []}
            mine = self._pid == os.getpid()
        if mine:
            for connection in idle[True] + idle[False]:
                _close(connection)

    # -- statements --------------------------------------------------------------------

    def run(
        self,
        what: str,
        statement: Statement,
        values: dict[str, Any],
        read: Callable[[Any], _T],
        *,
        relaxed: bool = False,
    ) -> _T:
        """Execute ``statement`` and ``read`` its cursor. A connection found broken
        (the server restarted) is replaced and the statement run once more; a database
        that cannot be reached raises :class:`StoreUnavailable`."""
        params = statement.params(values)
        for attempt in (1, 2):
            try:
                connection = self._take(relaxed)
            except Exception as exc:
                raise StoreUnavailable(f"{what}: {_first_line(exc)}") from exc
            try:
                cursor = connection.execute(statement.sql, params)
                try:
                    found = read(cursor)
                finally:
                    cursor.close()
            except Exception as exc:
                if not self._unavailable(exc):
                    self._give_back(relaxed, connection)
                    raise
                broken = self._broken(connection)
                self._discard(relaxed, connection)
                if attempt == 1 and broken:
                    continue
                raise StoreUnavailable(f"{what}: {_first_line(exc)}") from exc
            self._give_back(relaxed, connection)
            return found
        raise AssertionError("unreachable")  # pragma: no cover

    def _unavailable(self, exc: Exception) -> bool:
        if self.dialect == "sqlite":
            return isinstance(exc, (sqlite3.OperationalError, sqlite3.ProgrammingError))
        import psycopg

        return isinstance(exc, (psycopg.OperationalError, psycopg.ProgrammingError))

    def _broken(self, connection: Any) -> bool:
        """True for a connection the server dropped (worth one more try)."""
        if self.dialect == "sqlite":
            return False
        return bool(connection.closed or connection.broken)


def _close(connection: Any) -> None:
    try:
        connection.close()
    except Exception:  # already broken: nothing to close
        logger.debug("celery_reliable: closing a receipt connection failed")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def rows(cursor: Any) -> list[Any]:
    return list(cursor.fetchall())


def rowcount(cursor: Any) -> int:
    return int(cursor.rowcount)
