"""The periodic jobs' slots (``reliable_beat_runs``): one row per (entry, due time),
inserted by the beat that publishes it.

The insert is the claim: the primary key lets one of N beats' inserts win, on SQLite
and PostgreSQL alike, with no lock held between two statements and no leader. The
winner publishes, then marks the row published. A beat that dies in between leaves a
"claimed" row whose lease runs out; another beat takes it over (a conditional update,
which one beat wins too) and publishes the slot under the same task id.

Each statement is atomic on its own: PostgreSQL runs them in autocommit, one round trip
each. Times are naive UTC, as everywhere in the store; ``beat/`` deals in aware ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, select, update
from sqlalchemy.engine import Engine

from celery_reliable.store.engine import (
    first_row,
    rowcount,
    run_statement,
    single_statement_engine,
)
from celery_reliable.store.schema import beat_runs
from celery_reliable.store.timeutil import utcnow

CLAIMED = "claimed"
PUBLISHED = "published"
SKIPPED = "skipped"
#: A message that could not be built (a task's arguments Celery cannot serialize):
#: not tried again.
FAILED = "failed"

_c = beat_runs.c
_SLOT = and_(_c.entry == bindparam("p_entry"), _c.due_at == bindparam("p_due"))


@dataclass(frozen=True)
class BeatRun:
    """One slot of a periodic entry, as stored."""

    entry: str
    due_at: datetime
    task_name: str
    task_id: str
    state: str
    claimed_by: str
    claimed_at: datetime
    lease_expires_at: datetime | None
    published_at: datetime | None
    publishes: int
    #: A "skipped" row stands for this many slots, the first due at ``skipped_from``.
    skipped: int | None
    skipped_from: datetime | None

    def to_dict(self) -> dict[str, Any]:
        def when(value: datetime | None) -> str | None:
            return None if value is None else value.isoformat() + "Z"

        return {
            "entry": self.entry,
            "due_at": when(self.due_at),
            "task_name": self.task_name,
            "task_id": self.task_id,
            "state": self.state,
            "claimed_by": self.claimed_by,
            "claimed_at": when(self.claimed_at),
            "published_at": when(self.published_at),
            "publishes": self.publishes,
            "skipped": self.skipped,
            "skipped_from": when(self.skipped_from),
        }


def _run(row: Any) -> BeatRun:
    return BeatRun(
        entry=row.entry,
        due_at=row.due_at,
        task_name=row.task_name,
        task_id=row.task_id,
        state=row.state,
        claimed_by=row.claimed_by,
        claimed_at=row.claimed_at,
        lease_expires_at=row.lease_expires_at,
        published_at=row.published_at,
        publishes=int(row.publishes),
        skipped=row.skipped,
        skipped_from=row.skipped_from,
    )


def _insert_statement(insert: Any) -> Any:
    statement = insert(beat_runs).values(
        entry=bindparam("p_entry"),
        due_at=bindparam("p_due"),
        task_name=bindparam("p_task_name"),
        task_id=bindparam("p_task_id"),
        state=bindparam("p_state"),
        claimed_by=bindparam("p_by"),
        claimed_at=bindparam("p_now"),
        lease_expires_at=bindparam("p_lease"),
        publishes=0,
        skipped=bindparam("p_skipped"),
        skipped_from=bindparam("p_skipped_from"),
    )
    # The slot is someone's already: this beat's insert changes nothing, and returns no
    # row (a row count is not what every driver reports for an INSERT).
    return statement.on_conflict_do_nothing(index_elements=[_c.entry, _c.due_at]).returning(
        _c.entry
    )


_PUBLISHED = (
    update(beat_runs)
    .where(_SLOT)
    .values(
        state=PUBLISHED,
        published_at=bindparam("p_now"),
        publishes=_c.publishes + 1,
        lease_expires_at=None,
    )
)
_FAILED = update(beat_runs).where(_SLOT).values(state=FAILED, lease_expires_at=None)
#: Only while the claim is still this beat's.
_GIVE_BACK = (
    update(beat_runs)
    .where(_SLOT, _c.state == CLAIMED, _c.claimed_by == bindparam("p_by"))
    .values(lease_expires_at=bindparam("p_now"))
)
_ORPHANS = (
    select(beat_runs)
    .where(_c.state == CLAIMED, _c.lease_expires_at < bindparam("p_now"))
    .order_by(_c.due_at)
    .limit(bindparam("p_limit"))
)
_TAKE_OVER = (
    update(beat_runs)
    .where(_SLOT, _c.state == CLAIMED, _c.lease_expires_at < bindparam("p_now"))
    .values(
        claimed_by=bindparam("p_by"),
        claimed_at=bindparam("p_now"),
        lease_expires_at=bindparam("p_lease"),
    )
)
_ABANDON = (
    update(beat_runs)
    .where(_SLOT, _c.state == CLAIMED, _c.lease_expires_at < bindparam("p_now"))
    .values(
        state=SKIPPED,
        skipped=1,
        skipped_from=_c.due_at,
        claimed_by=bindparam("p_by"),
        lease_expires_at=None,
    )
)
_LAST_DUE = select(_c.entry, func.max(_c.due_at)).group_by(_c.entry)


class BeatRuns:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._single = single_statement_engine(engine)
        self._insert = _insert_statement(insert)

    # -- a beat's statements ---------------------------------------------------------

    def claim(
        self,
        entry: str,
        due_at: datetime,
        *,
        task_name: str,
        task_id: str,
        by: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> bool:
        """Insert the slot as claimed by ``by``: True when this call won it."""
        now = now or utcnow()
        params = {
            "p_entry": entry,
            "p_due": due_at,
            "p_task_name": task_name,
            "p_task_id": task_id,
            "p_state": CLAIMED,
            "p_by": by,
            "p_now": now,
            "p_lease": now + timedelta(seconds=lease_seconds),
            "p_skipped": None,
            "p_skipped_from": None,
        }
        return self._inserted("claiming a periodic slot", params)

    def skip(
        self,
        entry: str,
        due_at: datetime,
        *,
        task_name: str,
        task_id: str,
        by: str,
        skipped: int,
        skipped_from: datetime,
        now: datetime | None = None,
    ) -> bool:
        """Record ``skipped`` slots, the last due at ``due_at``, as one row: True when
        this call wrote it (the beat that says so in its log)."""
        params = {
            "p_entry": entry,
            "p_due": due_at,
            "p_task_name": task_name,
            "p_task_id": task_id,
            "p_state": SKIPPED,
            "p_by": by,
            "p_now": now or utcnow(),
            "p_lease": None,
            "p_skipped": skipped,
            "p_skipped_from": skipped_from,
        }
        return self._inserted("recording skipped periodic slots", params)

    def published(self, entry: str, due_at: datetime, now: datetime | None = None) -> None:
        params = {"p_entry": entry, "p_due": due_at, "p_now": now or utcnow()}
        self._write("marking a periodic slot published", _PUBLISHED, params)

    def failed(self, entry: str, due_at: datetime) -> None:
        params = {"p_entry": entry, "p_due": due_at}
        self._write("marking a periodic slot failed", _FAILED, params)

    def give_back(self, entry: str, due_at: datetime, by: str, now: datetime | None = None) -> bool:
        """End this beat's claim's lease now (its broker refused the message): the
        next beat to look for abandoned claims publishes the slot."""
        params = {"p_entry": entry, "p_due": due_at, "p_by": by, "p_now": now or utcnow()}
        return self._write("giving back a periodic claim", _GIVE_BACK, params)

    def orphans(self, now: datetime | None = None, limit: int = 100) -> list[BeatRun]:
        """Claimed slots whose lease ran out unpublished, oldest first."""
        params = {"p_now": now or utcnow(), "p_limit": limit}
        return run_statement(
            self._single,
            "looking for abandoned periodic claims",
            _ORPHANS,
            params,
            lambda result: [_run(row) for row in result],
        )

    def take_over(
        self, entry: str, due_at: datetime, by: str, lease_seconds: float, now: datetime
    ) -> bool:
        """Take an abandoned claim over: True when this call won it."""
        params = {
            "p_entry": entry,
            "p_due": due_at,
            "p_by": by,
            "p_now": now,
            "p_lease": now + timedelta(seconds=lease_seconds),
        }
        return self._write("taking over a periodic claim", _TAKE_OVER, params)

    def abandon(self, entry: str, due_at: datetime, by: str, now: datetime) -> bool:
        """Mark an abandoned claim older than the catch-up window skipped: True when
        this call did."""
        params = {"p_entry": entry, "p_due": due_at, "p_by": by, "p_now": now}
        return self._write("skipping an abandoned periodic claim", _ABANDON, params)

    def last_due(self) -> dict[str, datetime]:
        """Each entry's newest slot, whatever its state: where its schedule stands."""
        return run_statement(
            self._single,
            "reading the periodic slots",
            _LAST_DUE,
            {},
            lambda result: {str(entry): due for entry, due in result},
        )

    def _inserted(self, what: str, params: dict[str, Any]) -> bool:
        return run_statement(self._single, what, self._insert, params, first_row) is not None

    def _write(self, what: str, statement: Any, params: dict[str, Any]) -> bool:
        return run_statement(self._single, what, statement, params, rowcount) == 1

    # -- what the web view, the report and the tests read ----------------------------

    def latest(self, state: str | None = None) -> dict[str, BeatRun]:
        """Each entry's newest row (in ``state``, when given)."""
        newest = select(_c.entry, func.max(_c.due_at).label("due_at"))
        if state is not None:
            newest = newest.where(_c.state == state)
        subquery = newest.group_by(_c.entry).subquery()
        query = select(beat_runs).join(
            subquery, and_(_c.entry == subquery.c.entry, _c.due_at == subquery.c.due_at)
        )
        if state is not None:
            query = query.where(_c.state == state)
        return run_statement(
            self._single,
            "reading the periodic slots",
            query,
            {},
            lambda result: {row.entry: _run(row) for row in result},
        )

    def all(self, entry: str | None = None) -> list[BeatRun]:
        """Every row (of ``entry``), oldest slot first."""
        query = select(beat_runs).order_by(_c.entry, _c.due_at)
        if entry is not None:
            query = query.where(_c.entry == entry)
        return run_statement(
            self._single,
            "reading the periodic slots",
            query,
            {},
            lambda result: [_run(row) for row in result],
        )

    def prune(self, older_than_seconds: float, now: datetime | None = None) -> int:
        """Slots due longer ago than that, but for each entry's newest: what a beat
        reads to know where the entry's schedule stands (and which missed slots to
        catch up) after every beat was down."""
        cutoff = (now or utcnow()) - timedelta(seconds=older_than_seconds)
        newer = beat_runs.alias("newer")
        statement = delete(beat_runs).where(
            _c.due_at < cutoff,
            select(newer.c.due_at)
            .where(newer.c.entry == _c.entry, newer.c.due_at > _c.due_at)
            .exists(),
        )
        return run_statement(self._single, "pruning periodic slots", statement, {}, rowcount)
