"""The steps of resumable jobs (``self.step(name)``): one row per (task, job, step).

A row appears with the step's first ``advance`` (its cursor, as JSON text) or when the
step finishes, whichever comes first; ``finished_at`` set means a later execution of
the same job skips the step. An advance inside ``self.atomic()`` is written in that
transaction (:meth:`StepRows.advance_in`), so the cursor commits or rolls back with the
item's own writes; outside it, in a transaction of its own (:meth:`StepRows.advance`).
Rows are pruned by ``updated_at`` with the receipts' TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import BindParameter

from celery_reliable.store.engine import (
    first_row,
    rowcount,
    run_statement,
    single_statement_engine,
    unavailable_as,
)
from celery_reliable.store.schema import steps
from celery_reliable.store.timeutil import utcnow


@dataclass(frozen=True)
class StepRow:
    """One step of one job, as stored."""

    task_name: str
    job: str
    step: str
    #: The last advanced value as JSON text; None before the first advance.
    cursor: str | None
    advances: int
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


def _step_row(row: Any) -> StepRow:
    return StepRow(
        task_name=row.task_name,
        job=row.job,
        step=row.step,
        cursor=row.cursor,
        advances=row.advances,
        started_at=row.started_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
    )


_THIS_STEP = (
    steps.c.task_name == bindparam("p_task_name"),
    steps.c.job == bindparam("p_job"),
    steps.c.step == bindparam("p_step"),
)
_GET = select(steps).where(*_THIS_STEP)


def _advance_statement(insert: Any) -> Any:
    """The step's row with its new cursor: inserted by the first advance, updated after."""
    now: BindParameter[datetime] = bindparam("p_now")
    statement = insert(steps).values(
        task_name=bindparam("p_task_name"),
        job=bindparam("p_job"),
        step=bindparam("p_step"),
        cursor=bindparam("p_cursor"),
        advances=1,
        started_at=now,
        updated_at=now,
        finished_at=None,
    )
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[steps.c.task_name, steps.c.job, steps.c.step],
        set_={
            "cursor": excluded.cursor,
            "advances": steps.c.advances + 1,
            "updated_at": excluded.updated_at,
        },
    )


def _finish_statement(insert: Any) -> Any:
    """The step finished: its row (inserted if it never advanced) gets ``finished_at``."""
    now: BindParameter[datetime] = bindparam("p_now")
    statement = insert(steps).values(
        task_name=bindparam("p_task_name"),
        job=bindparam("p_job"),
        step=bindparam("p_step"),
        cursor=None,
        advances=0,
        started_at=now,
        updated_at=now,
        finished_at=now,
    )
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[steps.c.task_name, steps.c.job, steps.c.step],
        set_={"finished_at": excluded.finished_at, "updated_at": excluded.updated_at},
    )


def _params(task_name: str, job: str, step: str, **more: Any) -> dict[str, Any]:
    return {"p_task_name": task_name, "p_job": job, "p_step": step, **more}


class StepRows:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        # One statement each: PostgreSQL runs them in autocommit (one round trip).
        self._single = single_statement_engine(engine)
        self._advance = _advance_statement(insert)
        self._finish = _finish_statement(insert)

    def get(self, task_name: str, job: str, step: str) -> StepRow | None:
        params = _params(task_name, job, step)
        row = run_statement(self._single, "reading a step", _GET, params, first_row)
        return _step_row(row) if row is not None else None

    def advance_in(
        self,
        connection: Connection,
        task_name: str,
        job: str,
        step: str,
        cursor: str,
    ) -> None:
        """Store ``cursor`` (JSON text) in the caller's transaction: it commits, or rolls
        back, with the caller's writes (``self.atomic()``)."""
        params = _params(task_name, job, step, p_cursor=cursor, p_now=utcnow())
        with unavailable_as("advancing a step"):
            connection.execute(self._advance, params)

    def advance(self, task_name: str, job: str, step: str, cursor: str) -> None:
        """Store ``cursor`` (JSON text) at once, in a transaction of its own."""
        params = _params(task_name, job, step, p_cursor=cursor, p_now=utcnow())
        run_statement(self._single, "advancing a step", self._advance, params, rowcount)

    def finish(self, task_name: str, job: str, step: str) -> None:
        """The step's block ended without an exception: later executions skip it."""
        params = _params(task_name, job, step, p_now=utcnow())
        run_statement(self._single, "finishing a step", self._finish, params, rowcount)

    def of_job(self, task_name: str, job: str) -> list[StepRow]:
        """Every step a job recorded, the earliest started first."""
        query = (
            select(steps)
            .where(steps.c.task_name == task_name, steps.c.job == job)
            .order_by(steps.c.started_at, steps.c.step)
        )
        with unavailable_as("listing steps"), self._engine.connect() as connection:
            return [_step_row(row) for row in connection.execute(query)]

    def prune(self, older_than_seconds: float, now: datetime | None = None) -> int:
        """Rows not written for that long (finished or abandoned steps)."""
        cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
        statement = delete(steps).where(steps.c.updated_at < cutoff)
        with unavailable_as("pruning steps"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)
