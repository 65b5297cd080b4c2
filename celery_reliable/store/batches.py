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

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import Connection, Engine

from celery_reliable.store.engine import unavailable_as
from celery_reliable.store.schema import batch_members, batches
from celery_reliable.store.timeutil import utcnow

#: The outcomes that end a member, and the count column each adds to.
ENDINGS = ("succeeded", "duplicate", "cancelled", "discarded", "exhausted", "failed")
#: Endings that keep ``on_success`` from firing; their task ids are the summary's "failed".
BAD = ("discarded", "exhausted", "failed")

OPEN, SEALED, ABANDONED, COMPLETED = "open", "sealed", "abandoned", "completed"
STATES = (OPEN, SEALED, COMPLETED, ABANDONED)
#: What a member's outcome reads as until it ends (its column is NULL).
PENDING = "pending"
#: The callbacks a batch may have, as its columns (and its callbacks' task ids) name them.
CALLBACKS = ("on_complete", "on_success")

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


@dataclass(frozen=True)
class Ending:
    """A member's ending as it waits to be counted with others (``batches/tally.py``)."""

    batch_id: str
    task_id: str
    task_name: str
    #: One of :data:`ENDINGS`.
    outcome: str
    #: When the member ended (the ending's own clock, naive UTC).
    at: datetime


def _add_counts_sql() -> Any:
    added = ", ".join(f"{o} = {o} + :n_{o}" for o in ENDINGS)
    return text(
        f"UPDATE {batches.name} SET done = done + :n_done, {added} "
        "WHERE id = :p_id RETURNING done, total, state"
    )


#: A group's endings of one batch, added to its counts at once.
_ADD_COUNTS = _add_counts_sql()


_PG_GROUP = (
    f"WITH took AS (INSERT INTO {_MEMBERS} (batch_id, task_id, task_name, outcome, ended_at) "
    "SELECT * FROM unnest(%s::varchar[], %s::varchar[], %s::varchar[], %s::varchar[], "
    "%s::timestamp[]) "
    "ON CONFLICT (batch_id, task_id) DO UPDATE SET outcome = excluded.outcome, "
    f"ended_at = excluded.ended_at WHERE {_MEMBERS}.outcome IS NULL "
    "RETURNING batch_id, outcome) "
    "SELECT batch_id, outcome, count(*) FROM took GROUP BY batch_id, outcome"
)


_SQLITE_GROUP = (
    f"INSERT INTO {_MEMBERS} (batch_id, task_id, task_name, outcome, ended_at) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]') "
    "FROM json_each(?) WHERE true "  # WHERE: SQLite's upsert after a SELECT needs one
    "ON CONFLICT (batch_id, task_id) DO UPDATE SET outcome = excluded.outcome, "
    f"ended_at = excluded.ended_at WHERE {_MEMBERS}.outcome IS NULL "
    "RETURNING batch_id, outcome"
)


def _sqlite_time(row: dict[str, Any]) -> str:
    """A time as SQLAlchemy's ``DateTime`` keeps it in SQLite (so that it reads back)."""
    moment: datetime = row["ended_at"]
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


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


@dataclass(frozen=True)
class MemberRow:
    """A member of a batch as stored."""

    task_id: str
    task_name: str | None
    #: Its ending (one of :data:`ENDINGS`), None while pending.
    outcome: str | None
    ended_at: datetime | None


@dataclass(frozen=True)
class CallbackUse:
    """How a task stands as one callback (``on_complete`` or ``on_success``) of the
    batches the store keeps (completed ones are pruned after ``reliable_receipt_ttl``)."""

    which: str
    #: Batches that name the task as this callback.
    batches: int = 0
    #: Completed batches that published it (``on_success``: those with no bad member).
    fired: int = 0
    #: ``on_success`` of completed batches with a member DISCARDED, EXHAUSTED or FAILED.
    skipped: int = 0
    #: Batches still open or sealed: it fires when their last member ends.
    waiting: int = 0
    #: Batches whose block raised: it never fires.
    abandoned: int = 0
    #: The newest of those batches.
    last: BatchRow | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        last = self.last
        return {
            "which": self.which,
            "batches": self.batches,
            "fired": self.fired,
            "skipped": self.skipped,
            "waiting": self.waiting,
            "abandoned": self.abandoned,
            "last": None
            if last is None
            else {
                "batch": last.id,
                "description": last.description,
                "state": last.state,
                "done": last.done,
                "total": last.total,
                "created_at": _iso(last.created_at),
                "completed_at": _iso(last.completed_at),
            },
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat(timespec="seconds") + "Z"


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def callback_task(raw: str | None) -> str | None:
    """The task name of a callback's stored signature (a canvas: its own, e.g.
    ``celery.chain``)."""
    if raw is None:
        return None
    try:
        found = json.loads(raw).get("task")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


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

    def members_ended(
        self, endings: Iterable[Ending], now: datetime, on_completed: OnCompleted
    ) -> list[BatchRow]:
        """Count a group of members' endings in one transaction: one upsert of their
        rows, then one UPDATE per batch they belong to, adding what took (once per task
        id, as :meth:`member_ended`). Returns the batches the group completed
        (``on_completed`` was called for each, in the same transaction).

        Rows and batches are written in key order, so that two groups counted at once
        by two workers wait for each other instead of deadlocking (PostgreSQL)."""
        first: dict[tuple[str, str], Ending] = {}
        for ending in endings:
            if ending.outcome not in ENDINGS:
                raise ValueError(f"{ending.outcome!r} does not end a batch member")
            first.setdefault((ending.batch_id, ending.task_id), ending)
        if not first:
            return []
        rows = [
            {
                "batch_id": e.batch_id,
                "task_id": e.task_id,
                "task_name": e.task_name,
                "outcome": e.outcome,
                "ended_at": e.at,
            }
            for _, e in sorted(first.items())
        ]
        completed: list[BatchRow] = []
        with unavailable_as("counting batch members' ends"), self._engine.begin() as connection:
            counts: dict[str, dict[str, int]] = {}
            for batch_id, outcome, n in self._took(connection, rows):
                per = counts.setdefault(batch_id, dict.fromkeys(ENDINGS, 0))
                per[outcome] += int(n)
            for batch_id in sorted(counts):
                per = counts[batch_id]
                params: dict[str, Any] = {f"n_{o}": n for o, n in per.items()}
                params.update(p_id=batch_id, n_done=sum(per.values()))
                found = connection.execute(_ADD_COUNTS, params).first()
                if found is None or found.state != SEALED or found.done != found.total:
                    continue
                batch = complete_in(connection, batch_id, now, on_completed)
                if batch is not None:
                    completed.append(batch)
        return completed

    def _took(self, connection: Connection, rows: list[dict[str, Any]]) -> Iterable[Any]:
        """Write the endings' rows; (batch id, outcome, how many) of those that took.
        One statement, its rows given as one value (PostgreSQL: arrays, ``unnest``,
        counted by the server; SQLite: a JSON array, ``json_each``): SQLAlchemy's
        executemany with RETURNING cost about 70 µs of the worker's main process per
        ending, against about 30 here."""
        if not self._postgresql:
            given = json.dumps(
                [
                    [r["batch_id"], r["task_id"], r["task_name"], r["outcome"], _sqlite_time(r)]
                    for r in rows
                ]
            )
            took = connection.exec_driver_sql(_SQLITE_GROUP, (given,)).all()
            return [(batch_id, outcome, 1) for batch_id, outcome in took]
        columns = ("batch_id", "task_id", "task_name", "outcome", "ended_at")
        arrays = tuple([row[c] for row in rows] for c in columns)
        return connection.exec_driver_sql(_PG_GROUP, arrays).all()

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

    def page(
        self,
        *,
        state: str | None = None,
        text: str | None = None,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> list[BatchRow]:
        """A page of batches, newest first (by creation, then id): those older than the
        batch ``before``, or the ``limit`` nearest ones newer than the batch ``after``
        (a cursor: a batch id of the page next to it). ``state``: only those in it;
        ``text``: only those whose description contains it (any case) or whose id
        starts with it."""
        query = select(batches).where(*self._filter(state, text))
        column = batches.c
        cursor_id = before if before is not None else after
        if cursor_id is not None:
            at = select(column.created_at).where(column.id == cursor_id).scalar_subquery()
            if before is not None:
                query = query.where(
                    or_(column.created_at < at, and_(column.created_at == at, column.id < before))
                )
            else:
                query = query.where(
                    or_(column.created_at > at, and_(column.created_at == at, column.id > after))
                )
        if after is not None:
            query = query.order_by(column.created_at, column.id).limit(limit)
        else:
            query = query.order_by(column.created_at.desc(), column.id.desc()).limit(limit)
        with unavailable_as("listing batches"), self._engine.connect() as connection:
            rows = [_batch(row) for row in connection.execute(query)]
        return rows[::-1] if after is not None else rows

    def count(
        self, *, state: str | None = None, text: str | None = None, cap: int | None = None
    ) -> int:
        """Batches :meth:`page` would list; with ``cap``, counted up to ``cap + 1`` only
        (more: "over cap"), so that a page load never reads every row."""
        matching = select(batches.c.id).where(*self._filter(state, text))
        if cap is not None:
            matching = matching.limit(cap + 1)
        query = select(func.count()).select_from(matching.subquery())
        with unavailable_as("counting batches"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    @staticmethod
    def _filter(state: str | None, text: str | None) -> list[Any]:
        where: list[Any] = []
        if state is not None:
            where.append(batches.c.state == state)
        if text:
            pattern = "%" + _escape_like(text.lower()) + "%"
            where.append(
                or_(
                    func.lower(func.coalesce(batches.c.description, "")).like(pattern, escape="\\"),
                    batches.c.id.startswith(text, autoescape=True),
                )
            )
        return where

    def member_page(
        self,
        batch_id: str,
        *,
        outcome: str | None = None,
        before: str | None = None,
        after: str | None = None,
        limit: int = 50,
    ) -> list[MemberRow]:
        """A page of a batch's members in task id order: those after the task id
        ``after``, or the ``limit`` nearest ones before the task id ``before``.
        ``outcome``: only members that ended so (:data:`ENDINGS`), or :data:`PENDING`.
        Read along the members' primary key: a page of a 10,000-member batch costs
        what a page of a small one does."""
        column = batch_members.c
        query = select(batch_members).where(column.batch_id == batch_id)
        if outcome == PENDING:
            query = query.where(column.outcome.is_(None))
        elif outcome is not None:
            query = query.where(column.outcome == outcome)
        if before is not None:
            query = query.where(column.task_id < before).order_by(column.task_id.desc())
        else:
            if after is not None:
                query = query.where(column.task_id > after)
            query = query.order_by(column.task_id)
        with unavailable_as("reading a batch's members"), self._engine.connect() as connection:
            rows = [
                MemberRow(r.task_id, r.task_name, r.outcome, r.ended_at)
                for r in connection.execute(query.limit(limit))
            ]
        return rows[::-1] if before is not None else rows

    def last_endings(self, batch_ids: Iterable[str]) -> dict[str, datetime]:
        """``batch id -> when its latest member ended`` for those of ``batch_ids``
        with a member ended: how long a sealed batch has been quiet."""
        wanted = sorted(set(batch_ids))
        if not wanted:
            return {}
        column = batch_members.c
        query = (
            select(column.batch_id, func.max(column.ended_at).label("last"))
            .where(column.batch_id.in_(wanted), column.ended_at.is_not(None))
            .group_by(column.batch_id)
        )
        with unavailable_as("reading batches' endings"), self._engine.connect() as connection:
            return {row.batch_id: row.last for row in connection.execute(query)}

    def callback_uses(self, task_name: str) -> list[CallbackUse]:
        """How ``task_name`` stands as ``on_complete`` and as ``on_success`` of the
        batches kept (one entry for each it is, none when it is neither). The
        signatures are JSON text: the rows that mention the name are read, and the
        task each callback names is compared in Python (a canvas names its own)."""
        column = batches.c
        quoted = "%" + _escape_like(json.dumps(task_name)) + "%"
        query = (
            select(
                column.id,
                column.state,
                column.on_complete,
                column.on_success,
                *(column[outcome] for outcome in BAD),
            )
            .where(
                or_(
                    column.on_complete.like(quoted, escape="\\"),
                    column.on_success.like(quoted, escape="\\"),
                )
            )
            .order_by(column.created_at.desc(), column.id.desc())
        )
        uses: dict[str, dict[str, Any]] = {}
        with unavailable_as("reading batches' callbacks"), self._engine.connect() as connection:
            for row in connection.execute(query):
                for which in CALLBACKS:
                    if callback_task(getattr(row, which)) != task_name:
                        continue
                    use = uses.setdefault(which, {"which": which, "last": row.id})
                    use["batches"] = use.get("batches", 0) + 1
                    bad = any(getattr(row, outcome) for outcome in BAD)
                    if row.state == COMPLETED:
                        kind = "skipped" if which == "on_success" and bad else "fired"
                    elif row.state == ABANDONED:
                        kind = "abandoned"
                    else:
                        kind = "waiting"
                    use[kind] = use.get(kind, 0) + 1
            lasts = {
                row.id: _batch(row)
                for row in connection.execute(
                    select(batches).where(column.id.in_({u["last"] for u in uses.values()}))
                )
            }
        return [
            CallbackUse(**{**uses[which], "last": lasts.get(uses[which]["last"])})
            for which in CALLBACKS
            if which in uses
        ]

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
