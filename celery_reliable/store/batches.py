"""Batches' rows (``reliable_batches``, ``reliable_batch_members``): opened with the
block, sealed at its exit, counted by one statement per member ending, completed by
exactly one writer.

The seal's ``total`` is the count of the batch's member rows as its transaction sees
them: the block's direct publishes (written by the seal), those that ended before it,
and those ``publish_in`` wrote in the caller's transactions, which exist only if these
committed (or, when the block exits inside one still open, the seal is written in it:
:func:`seal_in`). So a rolled-back ``publish_in`` member is never waited for.

Why exactly one: every change of a batch's counts or state is an UPDATE of its one row,
which PostgreSQL (the row's lock) and SQLite (the write lock of the transaction)
apply one after the other, each seeing the one before. So of the seal and the member
endings, exactly one finds the batch sealed with ``done == total``: the seal when every
member ended before it, else the last ending. That one then moves the batch to
"completed" (a conditional UPDATE, which only one can win even if a bug let two try)
and, in the same transaction, writes the callbacks' messages to the outbox: they are
published once that commits, and never if it does not (``batches/ending.py``).

A member's ending is written once: the member's row takes an outcome only while it has
none (an upsert whose UPDATE is conditional), and only a row that took it adds to the
counts. On PostgreSQL both are one statement (a data-modifying CTE: one round trip per
ending); on SQLite, two statements in one transaction on a local file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from celery_reliable.store.engine import unavailable_as
from celery_reliable.store.schema import batch_members, batches
from celery_reliable.store.timeutil import utcnow

#: The outcomes that end a member, and the count column each adds to.
ENDINGS = ("succeeded", "duplicate", "cancelled", "discarded", "exhausted", "failed")
#: Endings that keep ``on_success`` from firing; their task ids are the summary's "failed".
BAD = ("discarded", "exhausted", "failed")

OPEN, SEALED, ABANDONED, COMPLETED = "open", "sealed", "abandoned", "completed"

_OPEN = insert(batches)
_BY_ID = select(batches).where(batches.c.id == bindparam("p_id"))
_FAILED = (
    select(batch_members.c.task_id)
    .where(
        batch_members.c.batch_id == bindparam("p_id"),
        batch_members.c.outcome.in_(BAD),
    )
    .order_by(batch_members.c.ended_at, batch_members.c.task_id)
)
_COMPLETE = (
    update(batches)
    .where(
        and_(
            batches.c.id == bindparam("p_id"),
            batches.c.state == SEALED,
            batches.c.done == batches.c.total,
        )
    )
    .values(state=COMPLETED, completed_at=bindparam("p_now"))
)


def seal_sql(state: str, param: str = ":p_id", now: str = ":p_now") -> str:
    """The seal: ``total`` is the batch's member rows as the sealing transaction sees
    them (those the seal writes, those that ended before it, those ``publish_in``
    wrote in transactions that committed, or in the sealing one itself)."""
    return (
        f"UPDATE {batches.name} SET state = '{state}', total = (SELECT count(*) FROM "
        f"{batch_members.name} WHERE batch_id = {param}), sealed_at = {now} "
        f"WHERE id = {param} AND state = '{OPEN}'"
    )


def _seal_sql(state: str) -> Any:
    return text(seal_sql(state) + " RETURNING done, total, state")


_SEAL = {SEALED: _seal_sql(SEALED), ABANDONED: _seal_sql(ABANDONED)}

_MEMBERS = batch_members.name
_UPSERT_ENDING = (
    f"INSERT INTO {_MEMBERS} (batch_id, task_id, task_name, outcome, ended_at) "
    "VALUES (:p_id, :p_task_id, :p_task_name, :p_outcome, :p_now) "
    "ON CONFLICT (batch_id, task_id) DO UPDATE SET outcome = excluded.outcome, "
    f"ended_at = excluded.ended_at WHERE {_MEMBERS}.outcome IS NULL"
)


def _count_sql(column: str, counted: str) -> str:
    return (
        f"UPDATE {batches.name} SET done = done + 1, {column} = {column} + 1 "
        f"WHERE id = :p_id{counted} RETURNING done, total, state"
    )


#: SQLite: the upsert, then (when it took) the count.
_SQLITE_ENDING = text(_UPSERT_ENDING)
_SQLITE_COUNT = {outcome: text(_count_sql(outcome, "")) for outcome in ENDINGS}
#: PostgreSQL: both in one statement; the count only when the upsert took.
_PG_ENDING = {
    outcome: text(
        f"WITH took AS ({_UPSERT_ENDING} RETURNING 1) "
        + _count_sql(outcome, " AND EXISTS (SELECT 1 FROM took)")
    )
    for outcome in ENDINGS
}
_PENDING_SQL = (
    f"INSERT INTO {_MEMBERS} (batch_id, task_id, task_name) "
    "VALUES (:p_id, :p_task_id, :p_task_name) ON CONFLICT (batch_id, task_id) DO NOTHING"
)
_PENDING = text(_PENDING_SQL)


def write_members_in(connection: Connection, members: Sequence[tuple[str, str, str]]) -> None:
    """Members (batch id, task id, task name) written pending on the caller's
    connection, in the caller's transaction (``publish_in``): they are members once it
    commits, and never were if it rolls back."""
    connection.execute(
        _PENDING,
        [{"p_id": b, "p_task_id": t, "p_task_name": n} for b, t, n in members],
    )


def seal_in(
    connection: Connection,
    batch_id: str,
    members: Sequence[tuple[str, str]],
    now: datetime,
    on_completed: OnCompleted,
    *,
    abandon: bool = False,
) -> BatchRow | None:
    """:meth:`BatchRows.seal` on the given connection, in its transaction (the store's
    own, or the caller's, when ``publish_in`` wrote members in it that it has not
    committed yet: the seal then commits, or rolls back, with them)."""
    if members:
        connection.execute(
            _PENDING,
            [
                {"p_id": batch_id, "p_task_id": task_id, "p_task_name": name}
                for task_id, name in members
            ],
        )
    state = ABANDONED if abandon else SEALED
    found = connection.execute(_SEAL[state], {"p_id": batch_id, "p_now": now}).first()
    if found is None:
        raise LookupError(f"batch {batch_id} is not open")
    if abandon or found.done != found.total:
        return None
    return complete_in(connection, batch_id, now, on_completed)


@dataclass(frozen=True)
class BatchRow:
    """A batch as stored."""

    id: str
    description: str | None
    state: str
    total: int | None
    done: int
    #: Members ended, by outcome (every ending outcome, 0 included).
    outcomes: dict[str, int]
    #: The callbacks' signatures as JSON (kombu's), or None.
    on_complete: str | None
    on_success: str | None
    created_at: datetime
    sealed_at: datetime | None
    completed_at: datetime | None

    @property
    def succeeded(self) -> bool:
        """No member ended DISCARDED, EXHAUSTED or FAILED."""
        return not any(self.outcomes[outcome] for outcome in BAD)


def _batch(row: Any) -> BatchRow:
    return BatchRow(
        id=row.id,
        description=row.description,
        state=row.state,
        total=row.total,
        done=int(row.done),
        outcomes={outcome: int(getattr(row, outcome)) for outcome in ENDINGS},
        on_complete=row.on_complete,
        on_success=row.on_success,
        created_at=row.created_at,
        sealed_at=row.sealed_at,
        completed_at=row.completed_at,
    )


#: Called once per batch, by whichever writer completed it, inside its transaction:
#: the batch and its failed members' task ids; it writes the callbacks' messages on the
#: connection it is given (``batches/ending.py``).
OnCompleted = Callable[[Connection, BatchRow, list[str]], None]


def complete_in(
    connection: Connection, batch_id: str, now: datetime, on_completed: OnCompleted
) -> BatchRow | None:
    won = connection.execute(_COMPLETE, {"p_id": batch_id, "p_now": now}).rowcount == 1
    if not won:
        return None
    batch = _batch(connection.execute(_BY_ID, {"p_id": batch_id}).one())
    failed = [row.task_id for row in connection.execute(_FAILED, {"p_id": batch_id})]
    on_completed(connection, batch, failed)
    return batch


class BatchRows:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._postgresql = engine.dialect.name == "postgresql"

    def open(
        self,
        batch_id: str,
        description: str | None,
        on_complete: str | None,
        on_success: str | None,
        now: datetime,
    ) -> None:
        """The batch's row, "open": its members may end before the seal."""
        values = {
            "id": batch_id,
            "description": description,
            "state": OPEN,
            "on_complete": on_complete,
            "on_success": on_success,
            "created_at": now,
            **dict.fromkeys(("done", *ENDINGS), 0),
        }
        with unavailable_as("opening a batch"), self._engine.begin() as connection:
            connection.execute(_OPEN, values)

    def seal(
        self,
        batch_id: str,
        members: Sequence[tuple[str, str]],
        now: datetime,
        on_completed: OnCompleted,
        *,
        abandon: bool = False,
    ) -> BatchRow | None:
        """Close the batch's membership: ``members`` (task id, task name) are those
        published directly; with those ``publish_in`` wrote (their rows committed),
        they are all of them. Returns the batch when the seal completed it (every
        member had ended, or there is none); ``on_completed`` was called then.
        ``abandon``: the block raised, so the batch never completes (its members still
        run and are counted)."""
        with unavailable_as("sealing a batch"), self._engine.begin() as connection:
            return seal_in(connection, batch_id, members, now, on_completed, abandon=abandon)

    def member_ended(  # noqa: PLR0917 - one member's ending, and what then
        self,
        batch_id: str,
        task_id: str,
        task_name: str,
        outcome: str,
        now: datetime,
        on_completed: OnCompleted,
    ) -> BatchRow | None:
        """Count a member's ending, once per task id whatever runs it twice. Returns
        the batch when this ending completed it (``on_completed`` was called)."""
        if outcome not in ENDINGS:
            raise ValueError(f"{outcome!r} does not end a batch member")
        params = {
            "p_id": batch_id,
            "p_task_id": task_id,
            "p_task_name": task_name,
            "p_outcome": outcome,
            "p_now": now,
        }
        with unavailable_as("counting a batch member's end"), self._engine.begin() as connection:
            if self._postgresql:
                counted = connection.execute(_PG_ENDING[outcome], params).first()
            else:
                took = connection.execute(_SQLITE_ENDING, params).rowcount == 1
                counted = (
                    connection.execute(_SQLITE_COUNT[outcome], params).first() if took else None
                )
            if counted is None or counted.state != SEALED or counted.done != counted.total:
                return None
            return complete_in(connection, batch_id, now, on_completed)

    def get(self, batch_id: str) -> BatchRow | None:
        with unavailable_as("reading a batch"), self._engine.connect() as connection:
            row = connection.execute(_BY_ID, {"p_id": batch_id}).first()
        return None if row is None else _batch(row)

    def recent(self, *, state: str | None = None, limit: int = 50) -> list[BatchRow]:
        """Batches, newest first (``state``: only those in it)."""
        query = select(batches).order_by(batches.c.created_at.desc(), batches.c.id).limit(limit)
        if state is not None:
            query = query.where(batches.c.state == state)
        with unavailable_as("listing batches"), self._engine.connect() as connection:
            return [_batch(row) for row in connection.execute(query)]

    def members(self, batch_id: str) -> list[tuple[str, str | None, str | None]]:
        """(task id, task name, outcome or None while pending) of every member known."""
        query = (
            select(batch_members.c.task_id, batch_members.c.task_name, batch_members.c.outcome)
            .where(batch_members.c.batch_id == batch_id)
            .order_by(batch_members.c.task_id)
        )
        with unavailable_as("reading a batch's members"), self._engine.connect() as connection:
            return [(r.task_id, r.task_name, r.outcome) for r in connection.execute(query)]

    def prune(self, ttl_seconds: float, now: datetime | None = None) -> int:
        """Delete batches (and their members) completed or abandoned longer ago than
        the TTL, and those whose block never exited (its process died) created that
        long ago. A sealed batch that never completed is kept: it is one to look at."""
        cutoff = (now or utcnow()) - timedelta(seconds=ttl_seconds)
        old = select(batches.c.id).where(
            or_(
                and_(batches.c.state == COMPLETED, batches.c.completed_at < cutoff),
                and_(batches.c.state == ABANDONED, batches.c.sealed_at < cutoff),
                and_(batches.c.state == OPEN, batches.c.created_at < cutoff),
            )
        )
        with unavailable_as("pruning batches"), self._engine.begin() as connection:
            ids = [row.id for row in connection.execute(old)]
            if not ids:
                return 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                connection.execute(delete(batch_members).where(batch_members.c.batch_id.in_(chunk)))
                connection.execute(delete(batches).where(batches.c.id.in_(chunk)))
            return len(ids)
