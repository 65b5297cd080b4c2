"""The outbox's rows (``reliable_outbox``): written in the caller's own transaction,
taken by a relay from the head (lowest ``id`` first), deleted once published.

Any number of relays may run at once (one in every worker, and ``celery reliable
relay``). They take turns at the head, so that messages leave in the order they were
written, and none waits on another:

* PostgreSQL: a relay locks a batch at the head with ``FOR UPDATE SKIP LOCKED`` and
  keeps of it only the rows up to the first one it skipped: it reads the ids of every
  row up to its batch's last, and keeps its rows while they match. None, when another
  relay holds the head; a prefix, when the batch went past rows another relay holds
  (a writer's rows that committed under a lower id after that relay took its batch, then
  this relay locked them and the rows after the other's). Publishing past rows another
  relay holds would publish later rows first, and break the order. So one relay
  publishes at a time; the others look again when woken. A relay that dies
  loses its lock with its connection, and its rows are taken again (published twice:
  the worker recognises the second, see ``execution.py``).
* SQLite: the relay's transaction takes the database's write lock at BEGIN (the store's
  ``BEGIN IMMEDIATE``): relays, and writers, wait their turn while a batch is published.
  Looking for rows (:meth:`OutboxRows.first_id`) takes no lock at all.

The store deals in column values; what they mean as a message is ``outbox/message.py``'s.
:meth:`OutboxRows.status` is the one read of how the outbox stands (depth, the oldest
message's age, the relays listening), for the worker's gauges, ``celery reliable
report`` and the web view's overview alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine

from celery_reliable.store.engine import first_row, run_statement, unavailable_as
from celery_reliable.store.schema import outbox
from celery_reliable.store.timeutil import utcnow

#: The PostgreSQL channel a writer NOTIFYs inside its transaction (delivered at commit,
#: and only then) and relays LISTEN on.
CHANNEL = "reliable_outbox"

_INSERT = insert(outbox)
_NOTIFY = text(f"SELECT pg_notify('{CHANNEL}', '')")
_HEAD = select(outbox).order_by(outbox.c.id).limit(bindparam("p_limit"))
_HEAD_LOCKED = _HEAD.with_for_update(skip_locked=True)
_IDS_UP_TO = (
    select(outbox.c.id)
    .where(outbox.c.id <= bindparam("p_last"))
    .order_by(outbox.c.id)
    .limit(bindparam("p_limit"))
)
_FIRST_ID = select(outbox.c.id).order_by(outbox.c.id).limit(1)
_DELETE = delete(outbox).where(outbox.c.id.in_(bindparam("p_ids", expanding=True)))
_DEPTH = select(func.count(), func.min(outbox.c.created_at))
# A relay's LISTEN connection sends nothing after its LISTEN (psycopg waits for
# notifications without a query), so its last statement stays that one. Another
# role's connections show no query text without pg_read_all_stats: not counted.
_LISTENING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    f"AND query = 'LISTEN {CHANNEL}'"
)


@dataclass(frozen=True)
class OutboxStatus:
    """How the outbox stands."""

    #: Messages waiting (written, not yet published, or published and not yet deleted).
    depth: int
    #: When the oldest waiting message was written (naive UTC), None when none waits.
    oldest_at: datetime | None
    #: Seconds the oldest has waited (0.0 when none waits).
    oldest_age: float
    #: PostgreSQL: the connections LISTENing for the outbox's commits, one per relay
    #: running (a worker's thread or ``celery reliable relay``); None when not known
    #: (not asked, or SQLite: a polling relay leaves no trace in the database).
    relays: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "depth": self.depth,
            "oldest_at": None
            if self.oldest_at is None
            else self.oldest_at.isoformat(timespec="seconds") + "Z",
            "oldest_age": round(self.oldest_age, 1),
            "relays": self.relays,
        }


@dataclass(frozen=True)
class OutboxRow:
    """One message waiting in the outbox, as stored."""

    id: int
    task_id: str
    task_name: str
    exchange: str
    routing_key: str
    body: bytes
    content_type: str
    content_encoding: str
    #: kombu JSON texts (``outbox/message.py`` reads them).
    headers: str
    properties: str
    declare: str | None
    created_at: datetime


def _row(row: Any) -> OutboxRow:
    return OutboxRow(
        id=int(row.id),
        task_id=row.task_id,
        task_name=row.task_name,
        exchange=row.exchange,
        routing_key=row.routing_key,
        body=bytes(row.body),
        content_type=row.content_type,
        content_encoding=row.content_encoding,
        headers=row.headers,
        properties=row.properties,
        declare=row.declare,
        created_at=row.created_at,
    )


@dataclass
class Batch:
    """The rows a relay holds, oldest first; it says which it published with
    :meth:`published`, and those are deleted when the batch ends, whatever ended it."""

    rows: list[OutboxRow]
    done: list[int] = field(default_factory=list)

    def published(self, row: OutboxRow) -> None:
        self.done.append(row.id)


def write_in(connection: Connection, values: Sequence[dict[str, Any]]) -> None:
    """Insert messages on the caller's connection, inside the caller's transaction; on
    PostgreSQL, NOTIFY the relays there too, so that they hear of it at the commit."""
    connection.execute(_INSERT, list(values))
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY)


class OutboxRows:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"

    @contextmanager
    def head(self, limit: int) -> Iterator[Batch | None]:
        """Hold up to ``limit`` rows at the head of the outbox for one transaction:
        yields the batch (its rows may be empty), or None when another relay holds the
        head (PostgreSQL). The rows the caller marked published are deleted and the
        transaction committed, also when the caller raised (a broker that failed
        half-way): those are out, the rest stay for the next batch."""
        with unavailable_as("taking the outbox's head"), self._engine.connect() as connection:
            transaction = connection.begin()
            try:
                batch = self._take(connection, limit)
            except BaseException:
                transaction.rollback()
                raise
            if batch is None:
                transaction.rollback()
                yield None
                return
            try:
                yield batch
            finally:
                # Deleted only after the broker took them: a crash before this commit
                # leaves them, and they are published again.
                if batch.done:
                    connection.execute(_DELETE, {"p_ids": batch.done})
                    transaction.commit()
                else:
                    transaction.rollback()

    def _take(self, connection: Connection, limit: int) -> Batch | None:
        params = {"p_limit": limit}
        if not self._postgresql:
            return Batch([_row(r) for r in connection.execute(_HEAD, params)])
        rows = [_row(r) for r in connection.execute(_HEAD_LOCKED, params)]
        if not rows:
            return Batch(rows)
        # Every row up to the batch's last, locked by another relay or not: the batch
        # is kept up to the first it does not hold (the rest stay locked, unpublished,
        # until this transaction ends).
        seen = connection.execute(_IDS_UP_TO, {"p_last": rows[-1].id, "p_limit": len(rows)})
        kept = 0
        for row, visible in zip(rows, seen.scalars(), strict=False):
            if row.id != visible:
                break
            kept += 1
        if kept == 0:
            return None  # another relay holds older rows: it goes first
        return Batch(rows[:kept])

    def first_id(self) -> int | None:
        """The id at the head of the outbox, or None when it is empty: what a relay
        looks at before it takes a batch. On SQLite a plain read in autocommit, which
        takes no lock (the store's transactions begin with the write lock)."""
        if self._postgresql:
            return run_statement(self._engine, "looking at the outbox", _FIRST_ID, {}, _id_of)
        found = self._sqlite_read(f"SELECT id FROM {outbox.name} ORDER BY id LIMIT 1")
        return None if found is None else int(found[0])

    def depth(self) -> tuple[int, datetime | None]:
        """How many messages wait, and when the oldest was written (None: none waits):
        the gauges a worker samples. Takes no lock on SQLite either."""
        if self._postgresql:
            with unavailable_as("counting the outbox"), self._engine.connect() as connection:
                count, oldest = connection.execute(_DEPTH).one()
            return int(count), oldest
        found = self._sqlite_read(f"SELECT count(*), min(created_at) FROM {outbox.name}")
        assert found is not None
        count, oldest = found
        # SQLAlchemy's text of a naive datetime (the column's type, read raw here).
        return int(count), None if oldest is None else datetime.fromisoformat(oldest)

    def status(self, *, relays: bool = False) -> OutboxStatus:
        """Depth and the oldest message's age (the query of :meth:`depth`), and with
        ``relays`` on PostgreSQL, how many relays listen for commits."""
        count, oldest = self.depth()
        age = 0.0 if oldest is None else max((utcnow() - oldest).total_seconds(), 0.0)
        listening = None
        if relays and self._postgresql:
            listening = run_statement(
                self._engine, "counting the outbox's relays", _LISTENING, {}, _count_of
            )
        return OutboxStatus(depth=count, oldest_at=oldest, oldest_age=age, relays=listening)

    def _sqlite_read(self, sql: str) -> Any:
        """One row of a read in autocommit, on a pooled connection (whose isolation
        level the store sets to None: no BEGIN, so no lock)."""
        with unavailable_as("looking at the outbox"):
            raw = self._engine.raw_connection()
            try:
                cursor = raw.cursor()
                try:
                    cursor.execute(sql)
                    return cursor.fetchone()
                finally:
                    cursor.close()
            finally:
                raw.close()

    def all(self) -> list[OutboxRow]:
        """Every waiting message, oldest first (tests, and a look at a backlog)."""
        with unavailable_as("reading the outbox"), self._engine.connect() as connection:
            return [_row(r) for r in connection.execute(select(outbox).order_by(outbox.c.id))]


def _count_of(result: Any) -> int:
    return int(result.scalar() or 0)


def _id_of(result: Any) -> int | None:
    row = first_row(result)
    return None if row is None else int(row[0])
