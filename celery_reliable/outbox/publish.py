"""``publish_in(session_or_connection, signature)``: the message written in the caller's
own transaction, so that it is sent if, and only if, that transaction commits.

The row goes through the caller's connection (a SQLAlchemy ``Session`` or
``Connection``, or Django's), never one of the store's: it commits or rolls back with
the caller's writes. So the store must be that very database; another one is refused
before anything is written or published.

Inside a ``Batch`` block, the messages it captured are members of the batch: each is
written pending (``reliable_batch_members``) in the same transaction, and the batch is
told on which transaction: a member whose transaction rolls back never was one, and
a block that exits while that transaction is still open is sealed in it
(``batches/ending.py``).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from celery_reliable.batches.context import current_batch
from celery_reliable.errors import OutboxError
from celery_reliable.headers import BATCH_HEADER
from celery_reliable.outbox.message import capturing_for
from celery_reliable.store import Store, migrate, require_store
from celery_reliable.store.batches import seal_in, write_members_in
from celery_reliable.store.outbox import write_in
from celery_reliable.store.schema import VERSION_TABLE
from celery_reliable.store.timeutil import utcnow

if TYPE_CHECKING:
    from celery_reliable.store.batches import BatchRow, OnCompleted

#: Stores whose schema a writer found at head in this process (checked once each).
_ready: weakref.WeakSet[Store] = weakref.WeakSet()
_head: list[str] = []


def publish_in(session_or_connection: Any, signature: Any, **options: Any) -> Any:
    """Write ``signature``'s message into the outbox inside the transaction of
    ``session_or_connection``: a relay publishes it once that transaction commits,
    and never if it rolls back. Returns the ``AsyncResult`` ``apply_async`` would
    (``options`` are ``apply_async``'s: ``countdown``, ``eta``, ``queue``, ...).

    ``session_or_connection``: a SQLAlchemy ``Session`` or ``Connection`` on the
    store's database, Django's ``django.db.transaction`` module (Django's connection
    to the store's database) or a Django connection. Raises :class:`OutboxError`
    when it is another database than the store's (``reliable_database_url``).

    With ``task_always_eager`` the task runs at once, as ``apply_async`` would run it.
    """
    app = signature.app
    store = require_store(app, "publish_in")
    target = _target_of(session_or_connection, store)
    if app.conf.task_always_eager:
        return signature.apply_async(**options)
    _check_schema(store, target)
    with capturing_for(app) as capture:
        result = signature.apply_async(**options)
    if not capture.messages:
        raise OutboxError(
            f"publish_in: {signature!r} produced no task message to write (task_protocol "
            "1 has no headers to mark it with): use Celery's default task_protocol = 2"
        )
    members = [
        (str(message.headers[BATCH_HEADER]), message.task_id, message.task_name)
        for message in capture.messages
        if BATCH_HEADER in message.headers
    ]
    batch = current_batch() if members else None
    try:
        now = utcnow()
        target.write([message.columns(now) for message in capture.messages])
        if members:
            target.write_members(members)
    except BaseException:
        if batch is not None:
            # The capture made them members of the block: nothing was written, so
            # nothing will be sent (the caller's transaction holds whatever was).
            batch._unpublished([task_id for _, task_id, _ in members])
        raise
    if batch is not None:
        batch._written_in(target, [task_id for _, task_id, _ in members])
    return result


class _SqlAlchemy:
    """The caller's SQLAlchemy connection (a session's is the one of its transaction)."""

    def __init__(self, connection: Connection, session: Session | None = None) -> None:
        self.connection = connection
        self.session = session
        self.url = connection.engine.url
        self.dialect = self.url.get_backend_name()
        self.key: object = connection

    def write(self, rows: list[dict[str, Any]]) -> None:
        write_in(self.connection, rows)

    def write_members(self, members: list[tuple[str, str, str]]) -> None:
        write_members_in(self.connection, members)

    def in_transaction(self) -> bool:
        # A session's connection is closed once its transaction ended.
        return not self.connection.closed and self.connection.in_transaction()

    def seal(
        self,
        batch_id: str,
        members: Sequence[tuple[str, str]],
        now: datetime,
        on_completed: OnCompleted,
        abandon: bool,
    ) -> BatchRow | None:
        return seal_in(self.connection, batch_id, members, now, on_completed, abandon=abandon)

    def on_rollback(self, callback: Callable[[], None]) -> bool:
        # The Connection's own events (a session's: the one of its root transaction)
        # are sent when the root transaction ends, never for a savepoint
        # (begin_nested()): "commit", or "rollback", which Connection.close() and
        # Session.close() send too for a transaction they end. One pair of listeners
        # per connection, however many batches are sealed in its transactions.
        connection = self.connection
        pending = _seals.get(connection)
        if pending is None:
            pending = _seals[connection] = []
            event.listen(connection, "commit", _forget_seals)
            event.listen(connection, "rollback", _seal_again)
        pending.append(callback)
        return True

    def holds_sqlite_write_lock(self) -> bool:
        raw = self.connection.connection.dbapi_connection
        return self.url.get_backend_name() == "sqlite" and bool(
            getattr(raw, "in_transaction", False)
        )

    def schema_version(self) -> str | None:
        found = self.connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
        value = found.scalar()
        return None if value is None else str(value)

    def migrate(self) -> bool:
        """Apply the store's migrations in the caller's transaction (SQLite only: its
        DDL is transactional, and the caller holds the lock another connection would
        wait for)."""
        if self.url.get_backend_name() != "sqlite":
            return False
        migrate.upgrade_in(self.connection)
        return True


#: What to call if a connection's transaction rolls back (``_SqlAlchemy.on_rollback``).
_seals: weakref.WeakKeyDictionary[Connection, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)


def _forget_seals(connection: Connection) -> None:
    pending = _seals.get(connection)
    if pending:
        pending.clear()


def _seal_again(connection: Connection) -> None:
    pending = _seals.get(connection)
    if not pending:
        return
    callbacks, pending[:] = list(pending), []

    def seal_again() -> None:
        for callback in callbacks:
            callback()

    # Sent before the DBAPI rollback, whose locks (the batch's row, SQLite's write
    # lock) the callbacks' own transactions wait for: not in this thread.
    threading.Thread(target=seal_again, name="celery_reliable-batch-seal", daemon=True).start()


class _Django:
    """Django's connection to one of its ``DATABASES``."""

    def __init__(self, connection: Any) -> None:
        from celery_reliable.django.database import engine_url

        self.connection = connection
        self.url = make_url(engine_url(connection.alias))
        self.dialect = str(connection.vendor)
        self.key: object = connection

    def write(self, rows: list[dict[str, Any]]) -> None:
        from celery_reliable.django.database import write_outbox

        write_outbox(self.connection, rows)

    def write_members(self, members: list[tuple[str, str, str]]) -> None:
        from celery_reliable.django.database import write_batch_members

        write_batch_members(self.connection, members)

    def in_transaction(self) -> bool:
        return bool(self.connection.in_atomic_block)

    def seal(
        self,
        batch_id: str,
        members: Sequence[tuple[str, str]],
        now: datetime,
        on_completed: OnCompleted,
        abandon: bool,
    ) -> BatchRow | None:
        from celery_reliable.django.database import seal_batch_in

        seal_batch_in(self.connection, batch_id, list(members), abandon=abandon)
        return None  # its members in this transaction have not run: it cannot complete

    def on_rollback(self, callback: Callable[[], None]) -> bool:
        # Django says when a transaction commits (on_commit), never a rollback: told by
        # a marker Django drops uncalled (django/rollback.py).
        from celery_reliable.django.rollback import on_rollback

        return on_rollback(self.connection, callback)

    def holds_sqlite_write_lock(self) -> bool:
        from celery_reliable.django.database import holds_sqlite_write_lock

        return holds_sqlite_write_lock(self.connection)

    def schema_version(self) -> str | None:
        from celery_reliable.django.database import schema_version

        return schema_version(self.connection)

    def migrate(self) -> bool:
        return False  # Django's own: manage.py migrate


def _target_of(given: Any, store: Store) -> _SqlAlchemy | _Django:
    if isinstance(given, Session):
        target: _SqlAlchemy | _Django = _SqlAlchemy(given.connection(), given)
    elif isinstance(given, Connection):
        target = _SqlAlchemy(given)
    elif getattr(given, "__name__", None) == "django.db.transaction":
        target = _Django(_django_connection(store))
    elif hasattr(given, "vendor") and hasattr(given, "alias") and hasattr(given, "cursor"):
        target = _Django(given)
    else:
        raise TypeError(
            "publish_in(session_or_connection, signature): pass a SQLAlchemy Session or "
            "Connection, or Django's transaction module (django.db.transaction), not "
            f"{type(given).__name__}"
        )
    if not same_database(target.url, store.engine.url):
        raise OutboxError(
            f"publish_in: the transaction is on {_shown(target.url)}, but the store "
            f"(reliable_database_url) is {_shown(store.engine.url)}; the outbox must be "
            "in the database your transaction writes to: point reliable_database_url at "
            "it (in Django: 'django')"
        )
    return target


def _django_connection(store: Store) -> Any:
    from django.db import connections

    return connections[store.django_alias or "default"]


def same_database(a: URL, b: URL) -> bool:
    """Two URLs reach the same database (a SQLite file by its real path; a server by
    host, port and database name, loopback addresses being one host)."""
    return _identity(a) == _identity(b)


_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


def _identity(url: URL) -> tuple[str, ...]:
    backend = url.get_backend_name()
    database = url.database or ""
    if backend == "sqlite":
        in_memory = database in ("", ":memory:") or "mode=memory" in database
        return (backend, database if in_memory else os.path.realpath(database))
    host = url.host or str(url.query.get("host") or "")
    return (
        backend,
        "loopback" if host in _LOOPBACK else host,
        str(url.port or ""),
        database,
    )


def _shown(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _check_schema(store: Store, target: _SqlAlchemy | _Django) -> None:
    """Once per process and store: the outbox's table is there. A SQLite store is
    migrated on first use, as everywhere: on a connection of its own, or, when the
    caller's transaction already holds the write lock (which that connection would
    wait for), in the caller's transaction. Otherwise (PostgreSQL, Django's SQLite)
    the caller's connection reads the schema's revision, and one that is behind is
    refused, saying how to migrate."""
    if store in _ready:
        return
    if store.dialect == "sqlite" and not target.holds_sqlite_write_lock():
        store.ensure_schema()
    else:
        if not _head:
            _head.append(migrate.head())
        try:
            found = target.schema_version()
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            found = None  # no version table: never migrated
        if found != _head[0] and target.migrate():
            return  # committed with the caller's transaction, or not: look again next time
        if found != _head[0]:
            how = (
                "python manage.py migrate celery_reliable"
                if store.django_alias is not None
                else "celery -A <app> reliable db upgrade"
            )
            raise OutboxError(
                f"publish_in: the celery_reliable schema is at {found or 'nothing'}, the "
                f"outbox needs {_head[0]}: run `{how}`"
            )
    _ready.add(store)


def _is_database_error(exc: BaseException) -> bool:
    """A database's error (the version table missing), through SQLAlchemy, Django or
    the driver: each has a ``DatabaseError`` among its classes (PEP 249)."""
    return isinstance(exc, DBAPIError) or any(
        cls.__name__ == "DatabaseError" for cls in type(exc).__mro__
    )
