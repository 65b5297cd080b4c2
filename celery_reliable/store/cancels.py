"""Persistent cancels (``celery -A proj reliable cancel``): one row per cancelled job.

Unlike Celery's revoke, which lives in each worker's memory (lost with a restart
unless ``--statedb``, never seen by a worker started later), the row stays: workers
load the rows into Celery's revoked set at start and read new ones every few seconds
(``worker/cancels.py``), and a running job's heartbeat reads its row in the beat's own
transaction (``store/progress.py``). Rows are pruned with the receipts.

A second cancel of the same job changes nothing: the first one's reason, author and
time are kept (the job was cancelled then), and the caller is told it was already.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.engine import Engine

from celery_reliable.store.engine import first_row, run_statement, unavailable_as
from celery_reliable.store.schema import cancels
from celery_reliable.store.timeutil import utcnow

#: The width of ``requested_by``; a longer name is cut.
REQUESTED_BY_WIDTH = 255


@dataclass(frozen=True)
class Cancellation:
    """One job's cancel, as requested."""

    task_id: str
    reason: str | None
    #: Who asked: ``user@host`` of the CLI, ``web:user`` of the web view.
    requested_by: str | None
    requested_at: datetime

    def describe(self) -> str:
        """The reason a cancelled execution ends with: ``cancelled by alice@ops: wrong
        file``."""
        who = f"cancelled by {self.requested_by}" if self.requested_by else "cancelled"
        return f"{who}: {self.reason}" if self.reason else who

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "reason": self.reason,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at.isoformat() + "Z",
        }


def cancellation(row: Any) -> Cancellation:
    return Cancellation(
        task_id=row.task_id,
        reason=row.reason,
        requested_by=row.requested_by,
        requested_at=row.requested_at,
    )


#: One job's cancel, by primary key.
_GET = select(cancels).where(cancels.c.task_id == bindparam("p_task_id"))


def _insert_statement(insert: Any) -> Any:
    statement = insert(cancels).values(
        task_id=bindparam("p_task_id"),
        reason=bindparam("p_reason"),
        requested_by=bindparam("p_requested_by"),
        requested_at=bindparam("p_now"),
    )
    # The first cancel stands: a second one inserts nothing (and returns no row).
    return statement.on_conflict_do_nothing(index_elements=[cancels.c.task_id]).returning(
        cancels.c.task_id
    )


class CancelRows:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._insert = _insert_statement(insert)

    def request(
        self,
        task_id: str,
        reason: str | None = None,
        requested_by: str | None = None,
        now: datetime | None = None,
    ) -> tuple[Cancellation, bool]:
        """Cancel job ``task_id``: the row as stored, and True if this call wrote it
        (False: it was cancelled before, and that first cancel is kept as it was)."""
        params = {
            "p_task_id": task_id,
            "p_reason": reason or None,
            "p_requested_by": (requested_by or None) and requested_by[:REQUESTED_BY_WIDTH],
            "p_now": now or utcnow(),
        }
        with unavailable_as("recording a cancel"), self._engine.begin() as connection:
            created = connection.execute(self._insert, params).first() is not None
            row = connection.execute(_GET, {"p_task_id": task_id}).first()
        return cancellation(row), created

    def get(self, task_id: str) -> Cancellation | None:
        row = run_statement(
            self._engine, "reading a cancel", _GET, {"p_task_id": task_id}, first_row
        )
        return cancellation(row) if row is not None else None

    def since(self, when: datetime | None) -> list[Cancellation]:
        """The cancels requested at or after ``when`` (every one for None), oldest first:
        what a worker loads at start and reads every few seconds."""
        query = select(cancels).order_by(cancels.c.requested_at)
        if when is not None:
            query = query.where(cancels.c.requested_at >= when)
        with unavailable_as("reading cancels"), self._engine.connect() as connection:
            return [cancellation(row) for row in connection.execute(query)]

    def all(self, limit: int = 100) -> list[Cancellation]:
        """The most recent cancels first."""
        query = select(cancels).order_by(cancels.c.requested_at.desc()).limit(limit)
        with unavailable_as("listing cancels"), self._engine.connect() as connection:
            return [cancellation(row) for row in connection.execute(query)]

    def prune(self, older_than_seconds: float, now: datetime | None = None) -> int:
        """Cancels requested longer ago than that (the receipt TTL, as the bootstep
        prunes them): a job with a countdown longer than that is no longer held."""
        cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
        statement = delete(cancels).where(cancels.c.requested_at < cutoff)
        with unavailable_as("pruning cancels"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)
