"""Paused queues and tasks (``celery -A proj reliable pause``): one row per pause.

The row is the pause: workers read every row at start and again every few seconds
(``worker/pauses.py``), so a pause holds across restarts and reaches a worker started
later; ``resume`` deletes the row. The table stays small (one row per paused queue or
task), so a worker reads it whole each time: a resume, being a delete, would not be
seen by a read of the rows written since a time.

A second pause of the same queue or task changes nothing: the first one's reason,
author and time are kept, and the caller is told it was paused already.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.engine import Engine

from celery_reliable.store.engine import first_row, run_statement, unavailable_as
from celery_reliable.store.schema import pauses
from celery_reliable.store.timeutil import utcnow

#: What can be paused.
QUEUE = "queue"
TASK = "task"
KINDS = (QUEUE, TASK)

#: The width of ``paused_by`` and ``name``; a longer author is cut.
NAME_WIDTH = 255


@dataclass(frozen=True)
class Pause:
    """One paused queue or task."""

    #: ``"queue"`` or ``"task"``.
    kind: str
    #: The queue's name, or the task's.
    name: str
    reason: str | None
    #: Who paused it: ``user@host`` of the CLI, ``web:user`` of the web view.
    paused_by: str | None
    paused_at: datetime

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.name

    def describe(self) -> str:
        """``queue emails paused by alice@ops: mail server down``."""
        who = f"paused by {self.paused_by}" if self.paused_by else "paused"
        text = f"{self.kind} {self.name} {who}"
        return f"{text}: {self.reason}" if self.reason else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "reason": self.reason,
            "paused_by": self.paused_by,
            "paused_at": self.paused_at.isoformat() + "Z",
        }


def pause_of(row: Any) -> Pause:
    return Pause(
        kind=row.kind,
        name=row.name,
        reason=row.reason,
        paused_by=row.paused_by,
        paused_at=row.paused_at,
    )


def _check(kind: str, name: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a pause is of a queue or a task, not {kind!r}")
    if not name or len(name) > NAME_WIDTH:
        raise ValueError(f"a {kind} name of 1 to {NAME_WIDTH} characters, not {name!r}")


_GET = select(pauses).where(
    pauses.c.kind == bindparam("p_kind"), pauses.c.name == bindparam("p_name")
)
_DELETE = delete(pauses).where(
    pauses.c.kind == bindparam("p_kind"), pauses.c.name == bindparam("p_name")
)


def _insert_statement(insert: Any) -> Any:
    statement = insert(pauses).values(
        kind=bindparam("p_kind"),
        name=bindparam("p_name"),
        reason=bindparam("p_reason"),
        paused_by=bindparam("p_paused_by"),
        paused_at=bindparam("p_now"),
    )
    # The first pause stands: a second one inserts nothing (and returns no row).
    return statement.on_conflict_do_nothing(
        index_elements=[pauses.c.kind, pauses.c.name]
    ).returning(pauses.c.name)


class PauseRows:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._insert = _insert_statement(insert)

    def pause(
        self,
        kind: str,
        name: str,
        reason: str | None = None,
        paused_by: str | None = None,
        now: datetime | None = None,
    ) -> tuple[Pause, bool]:
        """Pause queue or task ``name``: the row as stored, and True if this call wrote
        it (False: it was paused before, and that first pause is kept as it was)."""
        _check(kind, name)
        params = {
            "p_kind": kind,
            "p_name": name,
            "p_reason": reason or None,
            "p_paused_by": (paused_by or None) and paused_by[:NAME_WIDTH],
            "p_now": now or utcnow(),
        }
        with unavailable_as(f"pausing {kind} {name}"), self._engine.begin() as connection:
            created = connection.execute(self._insert, params).first() is not None
            row = connection.execute(_GET, params).first()
        return pause_of(row), created

    def resume(self, kind: str, name: str) -> Pause | None:
        """Resume queue or task ``name``: the pause it had (its row is deleted), or
        None when it was not paused."""
        _check(kind, name)
        params = {"p_kind": kind, "p_name": name}
        with unavailable_as(f"resuming {kind} {name}"), self._engine.begin() as connection:
            row = connection.execute(_GET, params).first()
            if row is None:
                return None
            connection.execute(_DELETE, params)
        return pause_of(row)

    def get(self, kind: str, name: str) -> Pause | None:
        row = run_statement(
            self._engine,
            "reading a pause",
            _GET,
            {"p_kind": kind, "p_name": name},
            first_row,
        )
        return pause_of(row) if row is not None else None

    def all(self) -> list[Pause]:
        """Every pause, queues first, each kind by name: what a worker loads at start
        and reads again every few seconds."""
        query = select(pauses).order_by(pauses.c.kind, pauses.c.name)
        with unavailable_as("reading pauses"), self._engine.connect() as connection:
            return [pause_of(row) for row in connection.execute(query)]
