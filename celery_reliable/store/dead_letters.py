"""Dead letters: every DISCARDED, EXHAUSTED and FAILED execution, kept for a human.

A row holds what went wrong (outcome, exception, traceback, reason, attempts) and
what is needed to publish the job again (task name, arguments, queue, exchange,
routing key, priority, custom headers). ``retry`` re-publishes it with a fresh
attempt budget; ``purge`` deletes rows.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads
from sqlalchemy import case, delete, false, func, insert, select, update
from sqlalchemy.engine import Engine

from celery_reliable.errors import DeadLetterError
from celery_reliable.headers import OWN_HEADERS, RETRY_OF_HEADER
from celery_reliable.store.engine import (
    first_row,
    run_statement,
    single_statement_engine,
    unavailable_as,
)
from celery_reliable.store.schema import dead_letters
from celery_reliable.store.timeutil import utcnow

#: Longest traceback kept (characters); the end, where the error is, is kept.
MAX_TRACEBACK = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    id: int
    task_id: str
    task_name: str
    queue: str | None
    args: list[Any] | None
    kwargs: dict[str, Any] | None
    options: dict[str, Any]
    redacted: bool
    outcome: str
    exc_type: str | None
    exc_message: str | None
    traceback: str | None
    reason: str
    attempts: int
    created_at: datetime
    retried_at: datetime | None
    retried_task_id: str | None
    #: When the arguments could not be stored as JSON (``args`` and ``kwargs`` are
    #: None): their text, as kept for reading (a pickled job's repr, an undecodable
    #: message's body).
    args_repr: str | None = None
    kwargs_repr: str | None = None
    #: The dead letter whose retry this job was (``dead retry``, the web view's Retry),
    #: when it was one.
    retry_of: int | None = None

    @property
    def retryable(self) -> bool:
        return not self.redacted and not self.options.get("args_unserializable", False)


def republish_options(request: Any) -> dict[str, Any]:
    """What :meth:`DeadLetters.retry` needs to publish the job where it came from,
    from a Celery request (or a ``Context`` built from a message's headers)."""
    if request is None:
        return {}
    delivery = request.delivery_info or {}
    given = request.headers or {}
    headers = {k: v for k, v in given.items() if k not in OWN_HEADERS}
    options = {
        "exchange": delivery.get("exchange"),
        "routing_key": delivery.get("routing_key"),
        "priority": delivery.get("priority"),
        "headers": headers,
        "root_id": request.root_id,
        "parent_id": request.parent_id,
    }
    origin = _dead_letter_id(given.get(RETRY_OF_HEADER))
    if origin is not None:
        # Not re-published (an own header): it names where this job came from, and
        # ``build_row`` stores it in its column.
        options["retry_of"] = origin
    return options


def _dead_letter_id(value: Any) -> int | None:
    """The dead letter id a header carries; None for anything else (a header set by
    hand must not stop the dead letter from being written)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value < 2**63 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return _dead_letter_id(int(value))
    return None


def queue_of(options: Mapping[str, Any]) -> str | None:
    """The queue of :func:`republish_options`, when the message names it."""
    # Published to the default exchange, the routing key is the queue's name.
    if options.get("exchange") in ("", None):
        key = options.get("routing_key")
        return str(key) if key else None
    return None


def encode_arguments(args: Any, kwargs: Any) -> tuple[str, str, bool]:
    """JSON of the arguments (Celery's JSON: dates, UUIDs, decimals survive).

    Arguments JSON cannot hold (pickle-serialized tasks) are kept as their repr so a
    human can still read them; such a dead letter cannot be re-published.
    """
    try:
        return kombu_dumps(list(args or ())), kombu_dumps(dict(kwargs or {})), True
    except (TypeError, ValueError):
        return (
            json.dumps({"repr": repr(args)}),
            json.dumps({"repr": repr(kwargs)}),
            False,
        )


def _repr_of(column: str | None) -> str | None:
    if column is None:
        return None
    try:
        text = json.loads(column).get("repr")
    except (ValueError, AttributeError):
        return column
    return text if isinstance(text, str) else column


def _row(row: Any) -> DeadLetter:
    options = json.loads(row.options) if row.options else {}
    unserializable = options.get("args_unserializable", False)
    return DeadLetter(
        id=row.id,
        task_id=row.task_id,
        task_name=row.task_name,
        queue=row.queue,
        args=None if row.args is None or unserializable else kombu_loads(row.args),
        kwargs=None if row.kwargs is None or unserializable else kombu_loads(row.kwargs),
        options=options,
        redacted=row.redacted,
        outcome=row.outcome,
        exc_type=row.exc_type,
        exc_message=row.exc_message,
        traceback=row.traceback,
        reason=row.reason,
        attempts=row.attempts,
        created_at=row.created_at,
        retried_at=row.retried_at,
        retried_task_id=row.retried_task_id,
        args_repr=_repr_of(row.args) if unserializable else None,
        kwargs_repr=_repr_of(row.kwargs) if unserializable else None,
        retry_of=row.retry_of,
    )


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a listing or a bulk action covers (every field given must
    match). ``state``: "pending" (not retried yet), "retried", or None for both."""

    task_name: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: Text the reason or the exception message contains (case-insensitive on SQLite
    #: and PostgreSQL alike).
    text: str | None = None
    state: str | None = None
    #: Only rows up to this id: a bulk action covers what its confirmation counted,
    #: not the rows that arrived since.
    max_id: int | None = None

    def where(self) -> list[Any]:
        column = dead_letters.c
        where: list[Any] = []
        if self.task_name:
            where.append(column.task_name == self.task_name)
        if self.outcome:
            where.append(column.outcome == self.outcome)
        if self.since is not None:
            where.append(column.created_at >= self.since)
        if self.until is not None:
            where.append(column.created_at < self.until)
        if self.text:
            pattern = "%" + _escape_like(self.text.lower()) + "%"
            where.append(
                func.lower(column.reason).like(pattern, escape="\\")
                | func.lower(func.coalesce(column.exc_message, "")).like(pattern, escape="\\")
            )
        if self.state == "pending":
            where.append(column.retried_at.is_(None))
        elif self.state == "retried":
            where.append(column.retried_at.is_not(None))
        elif self.state == "none":
            where.append(false())
        if self.max_id is not None:
            where.append(column.id <= self.max_id)
        return where

    def pending(self) -> DeadLetterFilter:
        """The same set without the rows retried already (what a bulk retry covers):
        nothing, when the set is the retried ones."""
        return replace(self, state="none" if self.state == "retried" else "pending")


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


#: Rows per statement when a bulk action walks the rows a filter matches.
BULK_CHUNK = 500


class DeadLetters:
    def __init__(self, engine: Engine, app: Any) -> None:
        self._engine = engine
        self._single = single_statement_engine(engine)
        self._app = app

    def write(self, **fields: Any) -> int:
        """Store one dead letter (the fields are :meth:`build_row`'s); returns its id."""
        row = self.build_row(**fields)
        inserted = run_statement(
            self._single,
            "writing dead letter",
            insert(dead_letters).values(**row).returning(dead_letters.c.id),
            None,
            first_row,
        )
        return int(inserted.id)

    def import_rows(self, rows: Iterable[Mapping[str, Any]]) -> tuple[list[int], int]:
        """Store rows as :meth:`build_row` makes them (read back from a log), each
        unless a dead letter of the same task id, outcome and time exists: the new
        ids, and how many were there already."""
        ids: list[int] = []
        present = 0
        with unavailable_as("importing dead letters"), self._engine.begin() as connection:
            for row in rows:
                found = connection.execute(
                    select(dead_letters.c.id).where(
                        dead_letters.c.task_id == row["task_id"],
                        dead_letters.c.outcome == row["outcome"],
                        dead_letters.c.created_at == row["created_at"],
                    )
                ).first()
                if found is not None:
                    present += 1
                    continue
                inserted = connection.execute(
                    insert(dead_letters).values(**row).returning(dead_letters.c.id)
                ).one()
                ids.append(int(inserted.id))
        return ids, present

    @staticmethod
    def build_row(
        *,
        task_id: str,
        task_name: str,
        queue: str | None,
        args: Any,
        kwargs: Any,
        options: Mapping[str, Any],
        redact: bool,
        outcome: str,
        exc_type: str | None,
        exc_message: str | None,
        traceback: str | None,
        reason: str,
        attempts: int,
    ) -> dict[str, Any]:
        """The row as it is stored (also what is logged when the store is down).
        ``options["retry_of"]`` (from :func:`republish_options`) goes to its column."""
        stored_options = dict(options)
        retry_of = _dead_letter_id(stored_options.pop("retry_of", None))
        if redact:
            args_json = kwargs_json = None
        else:
            args_json, kwargs_json, serializable = encode_arguments(args, kwargs)
            if not serializable:
                stored_options["args_unserializable"] = True
        if traceback is not None and len(traceback) > MAX_TRACEBACK:
            traceback = "...(truncated)\n" + traceback[-MAX_TRACEBACK:]
        return {
            "task_id": task_id,
            "task_name": task_name,
            "queue": queue,
            "args": args_json,
            "kwargs": kwargs_json,
            "options": json.dumps(stored_options, default=str),
            "redacted": redact,
            "outcome": outcome,
            "exc_type": exc_type,
            "exc_message": exc_message,
            "traceback": traceback,
            "reason": reason,
            "attempts": attempts,
            "created_at": utcnow(),
            "retry_of": retry_of,
        }

    def list(
        self,
        task_name: str | None = None,
        outcome: str | None = None,
        limit: int = 50,
        offset: int = 0,
        include_retried: bool = True,
    ) -> list[DeadLetter]:
        query = (
            select(dead_letters)
            .order_by(dead_letters.c.created_at.desc(), dead_letters.c.id.desc())
            .limit(limit)
            .offset(offset)
        )
        if task_name is not None:
            query = query.where(dead_letters.c.task_name == task_name)
        if outcome is not None:
            query = query.where(dead_letters.c.outcome == outcome)
        if not include_retried:
            query = query.where(dead_letters.c.retried_at.is_(None))
        with unavailable_as("listing dead letters"), self._engine.connect() as connection:
            return [_row(row) for row in connection.execute(query)]

    def page(
        self,
        where: DeadLetterFilter,
        limit: int = 50,
        before_id: int | None = None,
        after_id: int | None = None,
    ) -> builtins.list[DeadLetter]:
        """One page of matching rows, newest first, by keyset on the id: the rows
        older than ``before_id``, or the ``limit`` just newer than ``after_id``. The
        cost of a page does not grow with how far back it is."""
        with unavailable_as("listing dead letters"), self._engine.connect() as connection:
            return _page(connection, where, limit, before_id, after_id)

    def count_where(self, where: DeadLetterFilter, cap: int | None = None) -> int:
        """How many rows match; with ``cap``, counted up to ``cap + 1`` only (a count
        above ``cap`` means "more than cap"): at most that many index entries are read,
        instead of every matching row."""
        if cap is None:
            query = select(func.count()).select_from(dead_letters).where(*where.where())
        else:
            query = _capped_count(where, cap)
        with unavailable_as("counting dead letters"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def page_and_count(
        self,
        where: DeadLetterFilter,
        limit: int = 50,
        before_id: int | None = None,
        after_id: int | None = None,
        cap: int = 10_000,
    ) -> tuple[builtins.list[DeadLetter], int]:
        """:meth:`page` and :meth:`count_where` with ``cap``, as a listing shows them.

        A text filter is served by no index: its page and its count would each read
        every row (all of them when the text is rare). So with one, the ids of the
        newest ``cap + 1`` matches are read in one pass: they give the count, and the
        page when it lies among them (the first pages; any page when they are all the
        matches). Other filters are served by indexes: their page and capped count are
        two short reads."""
        column = dead_letters.c
        with unavailable_as("listing dead letters"), self._engine.connect() as connection:
            if not where.text:
                rows = _page(connection, where, limit, before_id, after_id)
                count = connection.execute(_capped_count(where, cap)).scalar_one()
                return rows, int(count)
            newest = select(column.id).where(*where.where()).order_by(column.id.desc())
            ids = [int(found) for found in connection.execute(newest.limit(cap + 1)).scalars()]
            # ids holds every match from its lowest id up.
            every = len(ids) <= cap
            if after_id is not None:
                chosen = [found for found in ids if found > after_id][-limit:]
                found_here = every or after_id >= ids[-1]
            else:
                chosen = [found for found in ids if before_id is None or found < before_id]
                chosen = chosen[:limit]
                found_here = every or len(chosen) == limit
            if not found_here:
                return _page(connection, where, limit, before_id, after_id), len(ids)
            if not chosen:
                return [], len(ids)
            query = select(dead_letters).where(column.id.in_(chosen)).order_by(column.id.desc())
            return [_row(row) for row in connection.execute(query)], len(ids)

    def ids_where(
        self, where: DeadLetterFilter, after_id: int = 0, limit: int = BULK_CHUNK
    ) -> builtins.list[int]:
        """The ids of matching rows above ``after_id``, ascending (a bulk action's walk)."""
        column = dead_letters.c
        query = (
            select(column.id)
            .where(*where.where(), column.id > after_id)
            .order_by(column.id)
            .limit(limit)
        )
        with unavailable_as("listing dead letters"), self._engine.connect() as connection:
            return [int(found) for found in connection.execute(query).scalars()]

    def purge_where(self, where: DeadLetterFilter) -> int:
        """Delete every matching row; returns how many."""
        with unavailable_as("purging dead letters"), self._engine.begin() as connection:
            statement = delete(dead_letters).where(*where.where())
            return int(connection.execute(statement).rowcount)

    def pending_by_task(self) -> dict[str, int]:
        """``task -> dead letters not retried yet``."""
        column = dead_letters.c
        query = (
            select(column.task_name, func.count())
            .where(column.retried_at.is_(None))
            .group_by(column.task_name)
        )
        with unavailable_as("counting dead letters"), self._engine.connect() as connection:
            return {str(name): int(count) for name, count in connection.execute(query)}

    def task_names(self) -> builtins.list[str]:
        """The tasks that have dead letters (for a filter's choices).

        One index seek per task (the next name after the last one found, a recursive
        query) instead of a DISTINCT over every row, which PostgreSQL has no skip scan for.
        """
        later = dead_letters.alias("later")
        names = select(func.min(dead_letters.c.task_name).label("name")).cte(
            "task_names", recursive=True
        )
        following = (
            select(func.min(later.c.task_name)).where(later.c.task_name > names.c.name)
        ).scalar_subquery()
        names = names.union_all(select(following).where(names.c.name.is_not(None)))
        query = select(names.c.name).where(names.c.name.is_not(None)).order_by(names.c.name)
        with unavailable_as("listing dead letters"), self._engine.connect() as connection:
            return [str(name) for name in connection.execute(query).scalars()]

    def count(self, task_name: str | None = None) -> int:
        query = select(func.count()).select_from(dead_letters)
        if task_name is not None:
            query = query.where(dead_letters.c.task_name == task_name)
        with unavailable_as("counting dead letters"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def counts_by_outcome(self, task_name: str | None = None) -> dict[str, tuple[int, int]]:
        """``outcome -> (dead letters, of which not retried yet)``."""
        pending = func.sum(case((dead_letters.c.retried_at.is_(None), 1), else_=0))
        query = select(dead_letters.c.outcome, func.count(), pending).group_by(
            dead_letters.c.outcome
        )
        if task_name is not None:
            query = query.where(dead_letters.c.task_name == task_name)
        with unavailable_as("counting dead letters"), self._engine.connect() as connection:
            return {
                outcome: (int(total), int(waiting or 0))
                for outcome, total, waiting in connection.execute(query)
            }

    def get(self, dead_letter_id: int) -> DeadLetter | None:
        query = select(dead_letters).where(dead_letters.c.id == dead_letter_id)
        with unavailable_as("reading dead letter"), self._engine.connect() as connection:
            row = connection.execute(query).first()
        return _row(row) if row is not None else None

    def of_task_ids(self, task_ids: Iterable[str]) -> dict[str, DeadLetter]:
        """``task id -> its dead letter`` for those of ``task_ids`` that have one (the
        newest, should a task id have several): what became of the jobs retries
        published, when they failed again."""
        wanted = sorted(set(task_ids))
        if not wanted:
            return {}
        query = (
            select(dead_letters)
            .where(dead_letters.c.task_id.in_(wanted))
            .order_by(dead_letters.c.id)
        )
        with unavailable_as("reading dead letters"), self._engine.connect() as connection:
            return {row.task_id: _row(row) for row in connection.execute(query)}

    def retries_of(self, dead_letter_id: int, limit: int = 50) -> builtins.list[DeadLetter]:
        """The dead letters that came from retrying this one, oldest first (a retry
        that failed again; ``--force`` retries may leave several)."""
        query = (
            select(dead_letters)
            .where(dead_letters.c.retry_of == dead_letter_id)
            .order_by(dead_letters.c.id)
            .limit(limit)
        )
        with unavailable_as("reading dead letters"), self._engine.connect() as connection:
            return [_row(row) for row in connection.execute(query)]

    def retry(self, dead_letter_id: int, force: bool = False) -> Any:
        """Publish the job again, to its original queue, with a fresh attempt budget.

        Returns the new ``AsyncResult``. The row is marked (``retried_at``,
        ``retried_task_id``) first, so two operators cannot both retry it; with
        ``force=True`` a row already retried is retried again.
        """
        letter = self.get(dead_letter_id)
        if letter is None:
            raise DeadLetterError(f"no dead letter {dead_letter_id}")
        if letter.redacted:
            raise DeadLetterError(
                f"dead letter {dead_letter_id} ({letter.task_name}) was stored redacted: "
                "its arguments were not kept, so it cannot be re-published"
            )
        if not letter.retryable:
            raise DeadLetterError(
                f"dead letter {dead_letter_id}: its arguments could not be stored as JSON"
            )
        if letter.retried_at is not None and not force:
            raise DeadLetterError(
                f"dead letter {dead_letter_id} was already retried as task "
                f"{letter.retried_task_id} at {letter.retried_at:%Y-%m-%d %H:%M:%S}; "
                "retry it again with force=True (on the command line: dead retry --force)"
            )
        from celery.utils import uuid

        new_id = uuid()
        mark = (
            update(dead_letters)
            .where(dead_letters.c.id == dead_letter_id)
            .values(retried_at=utcnow(), retried_task_id=new_id)
        )
        if not force:
            mark = mark.where(dead_letters.c.retried_at.is_(None))
        with unavailable_as("marking dead letter retried"), self._engine.begin() as connection:
            if connection.execute(mark).rowcount != 1:
                raise DeadLetterError(f"dead letter {dead_letter_id} was retried meanwhile")
        publish = {
            key: letter.options[key]
            for key in ("exchange", "routing_key", "priority")
            if letter.options.get(key) is not None
        }
        # The job carries where it came from: the dead letter it may end in links back.
        headers = {**(letter.options.get("headers") or {}), RETRY_OF_HEADER: dead_letter_id}
        try:
            return self._app.send_task(
                letter.task_name,
                args=letter.args,
                kwargs=letter.kwargs,
                task_id=new_id,
                queue=letter.queue,
                headers=headers,
                **publish,
            )
        except Exception:
            with self._engine.begin() as connection:
                connection.execute(
                    update(dead_letters)
                    .where(dead_letters.c.id == dead_letter_id)
                    .values(retried_at=letter.retried_at, retried_task_id=letter.retried_task_id)
                )
            raise

    def purge(
        self,
        ids: Iterable[int] | None = None,
        task_name: str | None = None,
        older_than: timedelta | None = None,
        retried_only: bool = False,
    ) -> int:
        """Delete dead letters matching every filter given; returns how many."""
        where = _purge_filter(ids, task_name, older_than, retried_only)
        with unavailable_as("purging dead letters"), self._engine.begin() as connection:
            return int(connection.execute(delete(dead_letters).where(*where)).rowcount)

    def count_matching(
        self,
        ids: Iterable[int] | None = None,
        task_name: str | None = None,
        older_than: timedelta | None = None,
        retried_only: bool = False,
    ) -> int:
        """How many dead letters ``purge`` with the same filters would delete now."""
        where = _purge_filter(ids, task_name, older_than, retried_only)
        query = select(func.count()).select_from(dead_letters).where(*where)
        with unavailable_as("counting dead letters"), self._engine.connect() as connection:
            return int(connection.execute(query).scalar_one())


def _capped_count(where: DeadLetterFilter, cap: int) -> Any:
    """``COUNT`` of the matching rows, reading at most ``cap + 1`` of them."""
    matching = select(dead_letters.c.id).where(*where.where()).limit(cap + 1)
    return select(func.count()).select_from(matching.subquery())


def _page(
    connection: Any,
    where: DeadLetterFilter,
    limit: int,
    before_id: int | None,
    after_id: int | None,
) -> list[DeadLetter]:
    """:meth:`DeadLetters.page` on a connection."""
    column = dead_letters.c
    query = select(dead_letters).where(*where.where())
    if after_id is not None:
        query = query.where(column.id > after_id).order_by(column.id.asc())
    else:
        if before_id is not None:
            query = query.where(column.id < before_id)
        query = query.order_by(column.id.desc())
    rows = [_row(row) for row in connection.execute(query.limit(limit))]
    return rows[::-1] if after_id is not None else rows


def _purge_filter(
    ids: Iterable[int] | None,
    task_name: str | None,
    older_than: timedelta | None,
    retried_only: bool,
) -> list[Any]:
    where: list[Any] = []
    if ids is not None:
        where.append(dead_letters.c.id.in_(list(ids)))
    if task_name is not None:
        where.append(dead_letters.c.task_name == task_name)
    if older_than is not None:
        where.append(dead_letters.c.created_at < utcnow() - older_than)
    if retried_only:
        where.append(dead_letters.c.retried_at.is_not(None))
    return where
