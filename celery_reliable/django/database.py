"""Django's database as the store: its SQLAlchemy URL, its migrations, and ``atomic()``
as Django's ``transaction.atomic()`` with the receipt marked (or, inside a step, held)
and a step's cursor written inside it, with Django's cursor; and the outbox's rows
written with it (``publish_in``), with a batch's members among them and, when the
batch's block exits inside the transaction, its seal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from celery.exceptions import ImproperlyConfigured
from sqlalchemy.engine import URL

from celery_reliable.store.batches import ABANDONED, SEALED, seal_sql
from celery_reliable.store.outbox import CHANNEL as OUTBOX_CHANNEL
from celery_reliable.store.receipts import IN_PROGRESS, RESULT_PENDING, SUCCEEDED, lease_lost
from celery_reliable.store.schema import VERSION_TABLE, batch_members, outbox, receipts, steps
from celery_reliable.store.timeutil import utcnow

if TYPE_CHECKING:
    from celery_reliable.store.receipts import Claim

#: The receipt update of ``Receipts.complete_in``, written for Django's cursor (its
#: ``%s`` placeholders are the same on SQLite and PostgreSQL).
_COMPLETE = (
    f"UPDATE {receipts.name} SET state = %s, result = %s, completed_at = %s, "
    "updated_at = %s "
    'WHERE task_name = %s AND "key" = %s AND claim_token = %s AND state = %s'
)

#: ``Receipts.hold_in`` for Django's cursor: the claim is still this execution's (the
#: row stays locked until the commit), and with a heartbeat its lease is renewed.
_HOLD = (
    f"UPDATE {receipts.name} SET updated_at = %s "
    'WHERE task_name = %s AND "key" = %s AND claim_token = %s AND state = %s'
)
_RENEW = (
    f"UPDATE {receipts.name} SET lease_expires_at = %s, updated_at = %s "
    'WHERE task_name = %s AND "key" = %s AND claim_token = %s AND state = %s'
)

#: ``StepRows.advance_in`` for Django's cursor (SQLite 3.24+ and PostgreSQL both have
#: ``ON CONFLICT ... DO UPDATE`` and ``excluded``).
_ADVANCE_STEP = (
    f'INSERT INTO {steps.name} (task_name, job, step, "cursor", advances, started_at, '
    "updated_at, finished_at) VALUES (%s, %s, %s, %s, 1, %s, %s, NULL) "
    'ON CONFLICT (task_name, job, step) DO UPDATE SET "cursor" = excluded."cursor", '
    f"advances = {steps.name}.advances + 1, updated_at = excluded.updated_at"
)

#: Django ``OPTIONS`` that are libpq connection parameters, passed on to the store's
#: own connections (``options`` carries a ``search_path``, for one).
_LIBPQ_OPTIONS = (
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "options", "service",
    "passfile", "target_session_attrs", "application_name", "connect_timeout",
)  # fmt: skip

#: How SQLAlchemy stores a DateTime on SQLite (text that sorts as time does).
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


def _settings(alias: str) -> dict[str, Any]:
    from django.db import connections

    try:
        settings: dict[str, Any] = connections[alias].settings_dict
    except Exception as exc:  # ConnectionDoesNotExist, or Django not set up
        raise ImproperlyConfigured(
            f"reliable_database_url names Django's database {alias!r}: {exc}"
        ) from exc
    return settings


def engine_url(alias: str) -> str:
    """The SQLAlchemy URL of ``DATABASES[alias]`` (as it is now: a test run's database
    once the test runner has created it)."""
    settings = _settings(alias)
    engine = str(settings.get("ENGINE", ""))
    name = settings.get("NAME")
    if engine.endswith("sqlite3"):
        text = str(name or "")
        if not text or text == ":memory:" or "mode=memory" in text:
            raise ImproperlyConfigured(
                f"Django's database {alias!r} is an in-memory SQLite database, which "
                "celery_reliable's own connections cannot see: give it a file (in "
                f"tests, DATABASES[{alias!r}]['TEST']['NAME'] = a path)"
            )
        return URL.create("sqlite", database=text).render_as_string(hide_password=False)
    if "postgresql" in engine or "postgis" in engine:
        port = settings.get("PORT")
        options = settings.get("OPTIONS") or {}
        query = {key: str(options[key]) for key in _LIBPQ_OPTIONS if key in options}
        host = settings.get("HOST") or None
        if host and str(host).startswith("/"):
            # A Unix socket's folder: libpq's host parameter, not the URL's host part.
            query["host"], host = str(host), None
        return URL.create(
            "postgresql",
            username=settings.get("USER") or None,
            password=settings.get("PASSWORD") or None,
            host=host,
            port=int(port) if port else None,
            database=str(name),
            query=query,
        ).render_as_string(hide_password=False)
    raise ImproperlyConfigured(
        f"Django's database {alias!r} uses {engine}; celery_reliable stores to SQLite or "
        "PostgreSQL: set reliable_database_url to a database URL of its own"
    )


def _engine(alias: str) -> Any:
    from celery_reliable.store.engine import create_store_engine

    return create_store_engine(engine_url(alias))


def upgrade_store(alias: str) -> None:
    """``manage.py migrate``: apply the store's migrations to ``DATABASES[alias]``."""
    from celery_reliable.store import migrate

    engine = _engine(alias)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def downgrade_store(alias: str) -> None:
    """``manage.py migrate celery_reliable zero``: drop the store's tables."""
    from celery_reliable.store import migrate

    engine = _engine(alias)
    try:
        migrate.downgrade(engine)
    finally:
        engine.dispose()


def refuse_a_test_transaction(alias: str) -> None:
    """The store's own connections would wait forever for a transaction a test holds
    open and never commits (pytest-django's ``db``, Django's ``TestCase``): say so."""
    from django.db import connections

    blocks = getattr(connections[alias], "atomic_blocks", None) or ()
    if any(getattr(block, "_from_testcase", False) for block in blocks):
        raise ImproperlyConfigured(
            f"celery_reliable's store is Django's database {alias!r}, which this test "
            "holds in a transaction that never commits, so the store's own connections "
            "would wait for it: mark the test @pytest.mark.django_db(transaction=True) "
            "(Django: TransactionTestCase)"
        )


def _as_column(vendor: str, when: Any) -> Any:
    """A naive UTC time as the column holds it (SQLAlchemy's text, on SQLite)."""
    return when.strftime(_SQLITE_DATETIME) if vendor == "sqlite" else when


def _complete_params(vendor: str, claim: Claim) -> list[Any]:
    now = _as_column(vendor, utcnow())
    return [
        SUCCEEDED,
        RESULT_PENDING,
        now,
        now,
        claim.task_name,
        claim.key,
        claim.token,
        IN_PROGRESS,
    ]


@contextmanager
def atomic(
    alias: str,
    claim: Claim | None,
    *,
    complete: bool = True,
    lease_seconds: float | None = None,
) -> Iterator[Any]:
    """Django's ``transaction.atomic(using=alias)``; with a claim, the receipt is marked
    succeeded as the block's last statement, so it commits with the block's writes
    (with ``complete=False``, inside a step: only held, see ``Receipts.hold_in``).
    Raises ``LeaseLost`` (rolling the block back) if the claim was taken over."""
    from django.db import connections, transaction

    connection = connections[alias]
    marking = claim is not None and not claim.completed
    with transaction.atomic(using=alias):
        yield connection
        if marking:
            assert claim is not None
            if not complete:
                _hold(connection, claim, lease_seconds)
                return
            with connection.cursor() as cursor:
                cursor.execute(_COMPLETE, _complete_params(connection.vendor, claim))
                if cursor.rowcount != 1:
                    raise lease_lost(claim)
            # Completed once it commits: inside an outer atomic() block this is only a
            # savepoint, and an outer rollback takes the receipt update with it (the
            # claim is then released, not left in progress until its lease ends).
            transaction.on_commit(partial(_committed, claim), using=alias)


def _committed(claim: Claim) -> None:
    claim.completed = claim.result_pending = True


def _hold(connection: Any, claim: Claim, lease_seconds: float | None) -> None:
    vendor = connection.vendor
    now = utcnow()
    where = [claim.task_name, claim.key, claim.token, IN_PROGRESS]
    with connection.cursor() as cursor:
        if lease_seconds is None:
            cursor.execute(_HOLD, [_as_column(vendor, now), *where])
        else:
            lease = now + timedelta(seconds=lease_seconds)
            cursor.execute(_RENEW, [_as_column(vendor, lease), _as_column(vendor, now), *where])
            if cursor.rowcount == 1:
                claim.lease_expires_at = lease
        if cursor.rowcount != 1:
            raise lease_lost(claim)


def advance_step(  # noqa: PLR0917 - which step, its cursor, and what then
    alias: str,
    task_name: str,
    job: str,
    step: str,
    cursor_json: str,
    on_commit: Callable[[], None],
) -> None:
    """A step's cursor written with Django's cursor inside the open
    ``transaction.atomic()`` block: it commits, or rolls back, with the block's ORM
    writes; ``on_commit`` runs once the outermost block commits."""
    from django.db import connections, transaction

    connection = connections[alias]
    now = _as_column(connection.vendor, utcnow())
    with connection.cursor() as cursor:
        cursor.execute(_ADVANCE_STEP, [task_name, job, step, cursor_json, now, now])
    transaction.on_commit(on_commit, using=alias)


#: The outbox's insert (``store/outbox.py``'s ``write_in``) for Django's cursor: every
#: name quoted, as ``declare`` is a keyword to PostgreSQL.
_OUTBOX_COLUMNS = (
    "task_id", "task_name", "exchange", "routing_key", "body", "content_type",
    "content_encoding", "headers", "properties", "declare", "created_at",
)  # fmt: skip
_QUOTED_COLUMNS = ", ".join('"' + column + '"' for column in _OUTBOX_COLUMNS)
_WRITE_OUTBOX = (
    f"INSERT INTO {outbox.name} ({_QUOTED_COLUMNS}) "
    f"VALUES ({', '.join(['%s'] * len(_OUTBOX_COLUMNS))})"
)
_NOTIFY_OUTBOX = f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')"
_VERSION = f"SELECT version_num FROM {VERSION_TABLE}"


def write_outbox(connection: Any, rows: list[dict[str, Any]]) -> None:
    """Outbox rows written with Django's cursor on ``connection``, in its open
    transaction (or committed at once in autocommit); on PostgreSQL the relays are
    NOTIFYed in it too, so that they hear of the rows at the commit."""
    vendor = connection.vendor
    values = [
        [_as_column(vendor, row[c]) if c == "created_at" else row[c] for c in _OUTBOX_COLUMNS]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(_WRITE_OUTBOX, values)
        if vendor == "postgresql":
            cursor.execute(_NOTIFY_OUTBOX)


#: A batch's members, pending (``store/batches.py``), and its seal, for Django's cursor.
_PENDING_MEMBERS = (
    f"INSERT INTO {batch_members.name} (batch_id, task_id, task_name) VALUES (%s, %s, %s) "
    "ON CONFLICT (batch_id, task_id) DO NOTHING"
)
#: Its parameters: the batch's id (the count), the time, the batch's id (the row).
_SEAL_BATCH = {state: seal_sql(state, param="%s", now="%s") for state in (SEALED, ABANDONED)}


def write_batch_members(connection: Any, members: list[tuple[str, str, str]]) -> None:
    """Batch members (batch id, task id, task name) written pending with Django's
    cursor, in its open transaction: members once it commits (``publish_in``)."""
    with connection.cursor() as cursor:
        cursor.executemany(_PENDING_MEMBERS, [list(member) for member in members])


def seal_batch_in(
    connection: Any, batch_id: str, members: list[tuple[str, str]], *, abandon: bool
) -> None:
    """A batch sealed with Django's cursor, in the open transaction that holds members
    ``publish_in`` wrote (``store/batches.py``'s seal): it commits with them. It cannot
    complete the batch: those members have not run."""
    vendor = connection.vendor
    with connection.cursor() as cursor:
        if members:
            cursor.executemany(
                _PENDING_MEMBERS, [[batch_id, task_id, name] for task_id, name in members]
            )
        now = _as_column(vendor, utcnow())
        cursor.execute(_SEAL_BATCH[ABANDONED if abandon else SEALED], [batch_id, now, batch_id])
        if cursor.rowcount != 1:
            raise LookupError(f"batch {batch_id} is not open")


def schema_version(connection: Any) -> str | None:
    """The store's Alembic revision as Django's ``connection`` sees it."""
    with connection.cursor() as cursor:
        cursor.execute(_VERSION)
        row = cursor.fetchone()
    return None if row is None else str(row[0])


def holds_sqlite_write_lock(connection: Any) -> bool:
    """Django's SQLite connection is inside a transaction (which may hold the write
    lock: the example shop's ``transaction_mode = "IMMEDIATE"`` takes it at BEGIN)."""
    raw = getattr(connection, "connection", None)
    return connection.vendor == "sqlite" and bool(getattr(raw, "in_transaction", False))
