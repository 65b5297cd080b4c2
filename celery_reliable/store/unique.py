"""Unique-enqueue locks: at most one queued-or-running job per (task, key) per period.

Acquiring is one statement: an insert whose conflict clause takes the row over only
when it expired (or is already this task id's, for a re-publish). Of N concurrent
publishers, exactly one insert wins; the others read the holder's task id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import BindParameter

from celery_reliable.errors import StoreContention
from celery_reliable.store.engine import (
    first_row,
    run_statement,
    single_statement_engine,
    unavailable_as,
)
from celery_reliable.store.keyset import by_task_and_key
from celery_reliable.store.schema import unique_locks
from celery_reliable.store.timeutil import utcnow


def _acquire_statement(insert: Any) -> Any:
    """Insert the lock; on conflict take it over only if it expired or is ours already.
    Built once per store, with bound parameters."""
    now: BindParameter[datetime] = bindparam("p_now")
    statement = insert(unique_locks).values(
        task_name=bindparam("p_task_name"),
        key=bindparam("p_key"),
        task_id=bindparam("p_task_id"),
        expires_at=bindparam("p_expires"),
        created_at=now,
    )
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[unique_locks.c.task_name, unique_locks.c.key],
        set_={
            "task_id": excluded.task_id,
            "expires_at": excluded.expires_at,
            "created_at": excluded.created_at,
        },
        where=or_(unique_locks.c.expires_at <= now, unique_locks.c.task_id == excluded.task_id),
    ).returning(unique_locks.c.task_id)


_HOLDER = select(unique_locks.c.task_id).where(
    unique_locks.c.task_name == bindparam("p_task_name"),
    unique_locks.c.key == bindparam("p_key"),
)


@dataclass(frozen=True)
class UniqueLock:
    task_name: str
    key: str
    #: The job holding the key: new publishes with the key are skipped until it ends.
    task_id: str
    expires_at: datetime
    created_at: datetime

    def held(self, now: datetime) -> bool:
        return self.expires_at > now


class UniqueLocks:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._single = single_statement_engine(engine)
        self._acquire = _acquire_statement(insert)

    def acquire(
        self,
        task_name: str,
        key: str,
        task_id: str,
        period: float,
        now: datetime | None = None,
    ) -> str:
        """Hold the key for ``period`` seconds; returns the holder's task id."""
        now = now or utcnow()
        params = {
            "p_task_name": task_name,
            "p_key": key,
            "p_task_id": task_id,
            "p_expires": now + timedelta(seconds=period),
            "p_now": now,
        }
        for _ in range(3):
            row = run_statement(
                self._single, "acquiring unique lock", self._acquire, params, first_row
            )
            if row is not None:
                return str(row.task_id)
            holder = run_statement(self._single, "reading unique lock", _HOLDER, params, first_row)
            if holder is not None:
                return str(holder.task_id)
        raise StoreContention(f"unique lock {task_name}/{key} kept vanishing")

    def release(self, task_name: str, key: str, task_id: str) -> None:
        statement = delete(unique_locks).where(
            unique_locks.c.task_name == task_name,
            unique_locks.c.key == key,
            unique_locks.c.task_id == task_id,
        )
        with unavailable_as("releasing unique lock"), self._engine.begin() as connection:
            connection.execute(statement)

    def holder(self, task_name: str, key: str, now: datetime | None = None) -> str | None:
        query = select(unique_locks.c.task_id).where(
            unique_locks.c.task_name == task_name,
            unique_locks.c.key == key,
            unique_locks.c.expires_at > (now or utcnow()),
        )
        with unavailable_as("reading unique lock"), self._engine.connect() as connection:
            holder = connection.execute(query).scalar()
        return None if holder is None else str(holder)

    def page(
        self,
        task_name: str | None = None,
        key_prefix: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 50,
    ) -> list[UniqueLock]:
        """One page of locks (expired ones included, until pruned), in key order."""
        query = by_task_and_key(unique_locks, task_name, key_prefix, after, limit)
        with unavailable_as("listing unique locks"), self._engine.connect() as connection:
            return [
                UniqueLock(row.task_name, row.key, row.task_id, row.expires_at, row.created_at)
                for row in connection.execute(query)
            ]

    def prune(self, now: datetime | None = None) -> int:
        statement = delete(unique_locks).where(unique_locks.c.expires_at <= (now or utcnow()))
        with unavailable_as("pruning unique locks"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)
