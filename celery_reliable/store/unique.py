"""Unique-enqueue locks: at most one queued-or-running job per (task, key) per period.

Acquiring is one statement: an insert whose conflict clause takes the row over only
when it expired (or is already this task id's, for a re-publish). Of N concurrent
publishers, exactly one insert wins; the others read the holder's task id.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.engine import Engine

from celery_reliable.store.engine import unavailable_as
from celery_reliable.store.schema import unique_locks
from celery_reliable.store.timeutil import utcnow


class UniqueLocks:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._insert = insert

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
        statement = self._insert(unique_locks).values(
            task_name=task_name,
            key=key,
            task_id=task_id,
            expires_at=now + timedelta(seconds=period),
            created_at=now,
        )
        excluded = statement.excluded
        statement = statement.on_conflict_do_update(
            index_elements=[unique_locks.c.task_name, unique_locks.c.key],
            set_={
                "task_id": excluded.task_id,
                "expires_at": excluded.expires_at,
                "created_at": excluded.created_at,
            },
            where=or_(unique_locks.c.expires_at <= now, unique_locks.c.task_id == task_id),
        ).returning(unique_locks.c.task_id)
        query = select(unique_locks.c.task_id).where(
            unique_locks.c.task_name == task_name, unique_locks.c.key == key
        )
        with unavailable_as("acquiring unique lock"):
            for _ in range(3):
                with self._engine.begin() as connection:
                    row = connection.execute(statement).first()
                    if row is not None:
                        return str(row.task_id)
                    holder = connection.execute(query).scalar()
                if holder is not None:
                    return str(holder)
        raise RuntimeError(f"unique lock {task_name}/{key} kept vanishing")

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

    def prune(self, now: datetime | None = None) -> int:
        statement = delete(unique_locks).where(unique_locks.c.expires_at <= (now or utcnow()))
        with unavailable_as("pruning unique locks"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)
