"""The last heartbeat of each running execution: how far it got and when it last beat.

Written by the execution's heartbeat at most once a second (an upsert, which returns
the job's cancel if it has one; for a keyed task, in the same transaction as its lease
renewal), removed when the execution ends.
A worker that died leaves its rows: they read as stale (their ``beat_at`` stops) and
are pruned with the receipts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, select
from sqlalchemy.engine import Engine

from celery_reliable.store.cancels import Cancellation
from celery_reliable.store.engine import first_row, rowcount, run_statement, unavailable_as
from celery_reliable.store.receipts import Claim, renew_in
from celery_reliable.store.schema import cancels, progress
from celery_reliable.store.timeutil import utcnow


@dataclass(frozen=True)
class Progress:
    """One running execution's last heartbeat."""

    task_id: str
    task_name: str
    hostname: str | None
    pid: int
    started_at: datetime
    beat_at: datetime
    #: Fraction done, 0 to 1, as the body last said; None if it never said.
    progress: float | None
    details: dict[str, Any]

    def age(self, now: datetime | None = None) -> float:
        """Seconds since the last beat that reached the store."""
        return ((now or utcnow()) - self.beat_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "task": self.task_name,
            "hostname": self.hostname,
            "pid": self.pid,
            "started_at": self.started_at.isoformat() + "Z",
            "beat_at": self.beat_at.isoformat() + "Z",
            "progress": self.progress,
            "details": self.details,
        }


def _progress(row: Any) -> Progress:
    try:
        details = json.loads(row.details) if row.details else {}
    except ValueError:
        details = {"unreadable": row.details}
    return Progress(
        task_id=row.task_id,
        task_name=row.task_name,
        hostname=row.hostname,
        pid=row.pid,
        started_at=row.started_at,
        beat_at=row.beat_at,
        progress=row.progress,
        details=details if isinstance(details, dict) else {"value": details},
    )


class Beat(NamedTuple):
    """What a beat's transaction found."""

    #: False if the claim is no longer this execution's (the beat is kept).
    kept: bool
    #: The job's cancel, if it was cancelled (``celery reliable cancel``).
    cancel: Cancellation | None


_GET = select(progress).where(progress.c.task_id == bindparam("p_task_id"))
_FINISH = delete(progress).where(progress.c.task_id == bindparam("p_task_id"))


def _upsert_statement(insert: Any) -> Any:
    statement = insert(progress).values(
        task_id=bindparam("p_task_id"),
        task_name=bindparam("p_task_name"),
        hostname=bindparam("p_hostname"),
        pid=bindparam("p_pid"),
        started_at=bindparam("p_started_at"),
        beat_at=bindparam("p_now"),
        progress=bindparam("p_progress"),
        details=bindparam("p_details"),
    )
    excluded = statement.excluded
    # The job's cancel comes back with the upsert (scalar subqueries by primary key in
    # its RETURNING): no round trip of its own. NULLs when it was not cancelled.
    return statement.on_conflict_do_update(
        index_elements=[progress.c.task_id],
        set_={
            "task_name": excluded.task_name,
            "hostname": excluded.hostname,
            "pid": excluded.pid,
            "started_at": excluded.started_at,
            "beat_at": excluded.beat_at,
            "progress": excluded.progress,
            "details": excluded.details,
        },
    ).returning(
        *(
            select(column)
            .where(cancels.c.task_id == bindparam("p_task_id"))
            .scalar_subquery()
            .label(f"cancel_{column.name}")
            for column in (cancels.c.reason, cancels.c.requested_by, cancels.c.requested_at)
        )
    )


class ProgressRows:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._upsert = _upsert_statement(insert)

    def beat(  # noqa: PLR0917 - the columns of a beat, in order
        self,
        task_id: str,
        task_name: str,
        hostname: str | None,
        pid: int,
        started_at: datetime,
        fraction: float | None,
        details: dict[str, Any],
        claim: Claim | None = None,
        lease_seconds: float = 0.0,
    ) -> Beat:
        """Record a beat; with ``claim``, renew its lease in the same transaction; and
        read the job's cancel in it (one primary-key lookup)."""
        now = utcnow()
        params = {
            "p_task_id": task_id,
            "p_task_name": task_name,
            "p_hostname": hostname,
            "p_pid": pid,
            "p_started_at": started_at,
            "p_now": now,
            "p_progress": fraction,
            # A value JSON cannot hold is kept as its text: a beat never fails on it.
            "p_details": json.dumps(details, default=str) if details else None,
        }
        with unavailable_as("recording a heartbeat"), self._engine.begin() as connection:
            row = connection.execute(self._upsert, params).one()
            kept = claim is None or renew_in(connection, claim, lease_seconds, now)
        if row.cancel_requested_at is None:
            return Beat(kept, None)
        cancel = Cancellation(
            task_id, row.cancel_reason, row.cancel_requested_by, row.cancel_requested_at
        )
        return Beat(kept, cancel)

    def finish(self, task_id: str) -> None:
        """The execution ended: its row goes."""
        run_statement(
            self._engine, "removing a heartbeat", _FINISH, {"p_task_id": task_id}, rowcount
        )

    def get(self, task_id: str) -> Progress | None:
        row = run_statement(
            self._engine, "reading a heartbeat", _GET, {"p_task_id": task_id}, first_row
        )
        return _progress(row) if row is not None else None

    def running(self, limit: int = 100) -> list[Progress]:
        """The executions with a heartbeat, the most recent beat first."""
        query = select(progress).order_by(progress.c.beat_at.desc()).limit(limit)
        with unavailable_as("listing heartbeats"), self._engine.connect() as connection:
            return [_progress(row) for row in connection.execute(query)]

    def prune(self, older_than_seconds: float, now: datetime | None = None) -> int:
        """Rows whose last beat is older than that: executions whose worker died."""
        cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
        statement = delete(progress).where(progress.c.beat_at < cutoff)
        with unavailable_as("pruning heartbeats"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)
