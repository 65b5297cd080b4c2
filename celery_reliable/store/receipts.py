"""Idempotency receipts: claim, complete, release, prune.

Claiming is one statement in the common case: an insert whose conflict clause takes
over the row only when its lease has expired (and the payload matches). Two workers
can never both own a key: the primary key makes the insert race-free and the takeover
is one atomic conditional update. Only when the key exists and is not ours is a second
statement needed, to read why.
"""

from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, case, delete, func, or_, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from celery_reliable.errors import LeaseLost, StoreContention
from celery_reliable.store.engine import (
    first_row,
    rowcount,
    run_statement,
    single_statement_engine,
    unavailable_as,
)
from celery_reliable.store.hotpath import HotPath, Statement
from celery_reliable.store.hotpath import rowcount as hot_rowcount
from celery_reliable.store.hotpath import rows as hot_rows
from celery_reliable.store.keyset import by_task_and_key
from celery_reliable.store.schema import receipts
from celery_reliable.store.timeutil import utcnow

IN_PROGRESS = "in_progress"
SUCCEEDED = "succeeded"

#: The result column of a receipt ``atomic()`` marked succeeded while its body has not
#: returned yet: the value is stored (or the column cleared) when it returns. Not JSON,
#: so never a stored result (those are kombu's JSON text, or NULL for none).
RESULT_PENDING = "<pending>"


@dataclass
class Claim:
    """A receipt this execution owns until ``lease_expires_at``."""

    task_name: str
    key: str
    token: str
    task_id: str
    claims: int
    lease_expires_at: datetime
    #: Set once the receipt is marked succeeded (by ``atomic()`` or after the body).
    completed: bool = False
    #: ``atomic()`` marked it succeeded and the body's result is not stored yet: until
    #: it is, the lease stays (renewed by heartbeats) and a duplicate snoozes.
    result_pending: bool = False

    @property
    def took_over(self) -> bool:
        return self.claims > 1


@dataclass(frozen=True)
class Receipt:
    """A receipt row as stored."""

    task_name: str
    key: str
    payload_hash: str
    state: str
    task_id: str
    claims: int
    lease_expires_at: datetime | None
    result: str | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    def lease_live(self, now: datetime) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at > now

    @property
    def result_pending(self) -> bool:
        """Succeeded in ``atomic()``, its execution's result not stored yet."""
        return self.state == SUCCEEDED and self.result == RESULT_PENDING


def _receipt(row: Any) -> Receipt:
    return Receipt(
        task_name=row.task_name,
        key=row.key,
        payload_hash=row.payload_hash,
        state=row.state,
        task_id=row.task_id,
        claims=row.claims,
        lease_expires_at=row.lease_expires_at,
        result=row.result,
        created_at=row.created_at,
        updated_at=row.updated_at,
        completed_at=row.completed_at,
    )


def _claim_statement(insert: Any) -> Any:
    """Insert a claim; on conflict, take the row over only if its claim is dead.

    Built once per store with bound parameters: the per-call work is binding values,
    and SQLAlchemy's compiled cache serves the SQL.
    """
    now: BindParameter[datetime] = bindparam("p_now")
    statement = insert(receipts).values(
        task_name=bindparam("p_task_name"),
        key=bindparam("p_key"),
        payload_hash=bindparam("p_payload_hash"),
        state=IN_PROGRESS,
        task_id=bindparam("p_task_id"),
        claim_token=bindparam("p_token"),
        claims=1,
        lease_expires_at=bindparam("p_lease"),
        created_at=now,
        updated_at=now,
    )
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[receipts.c.task_name, receipts.c.key],
        set_={
            "task_id": excluded.task_id,
            "claim_token": excluded.claim_token,
            "claims": receipts.c.claims + 1,
            "lease_expires_at": excluded.lease_expires_at,
            "updated_at": excluded.updated_at,
        },
        # Take over only a claim whose worker stopped renewing it: in progress, lease
        # expired, same payload.
        where=and_(
            receipts.c.state == IN_PROGRESS,
            receipts.c.lease_expires_at < now,
            receipts.c.payload_hash == excluded.payload_hash,
        ),
    ).returning(receipts.c.claims)


_THIS_CLAIM = and_(
    receipts.c.task_name == bindparam("p_task_name"),
    receipts.c.key == bindparam("p_key"),
    receipts.c.claim_token == bindparam("p_token"),
)
_GET = select(receipts).where(
    receipts.c.task_name == bindparam("p_task_name"), receipts.c.key == bindparam("p_key")
)
_COMPLETE = (
    update(receipts)
    .where(_THIS_CLAIM, receipts.c.state == IN_PROGRESS)
    .values(
        state=SUCCEEDED,
        result=bindparam("p_result"),
        completed_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
        lease_expires_at=None,
    )
)
#: ``atomic()``'s mark: succeeded, the result to come (the lease stays until then).
_COMPLETE_PENDING = (
    update(receipts)
    .where(_THIS_CLAIM, receipts.c.state == IN_PROGRESS)
    .values(
        state=SUCCEEDED,
        result=RESULT_PENDING,
        completed_at=bindparam("p_now"),
        updated_at=bindparam("p_now"),
    )
)
_STORE_RESULT = (
    update(receipts)
    .where(_THIS_CLAIM, receipts.c.state == SUCCEEDED)
    .values(result=bindparam("p_result"), lease_expires_at=None)
)
_RELEASE = delete(receipts).where(_THIS_CLAIM, receipts.c.state == IN_PROGRESS)
_RENEW = (
    update(receipts)
    .where(
        _THIS_CLAIM,
        or_(
            receipts.c.state == IN_PROGRESS,
            and_(receipts.c.state == SUCCEEDED, receipts.c.result == RESULT_PENDING),
        ),
    )
    .values(lease_expires_at=bindparam("p_lease"), updated_at=bindparam("p_now"))
)
_HOLD = (
    update(receipts)
    .where(_THIS_CLAIM, receipts.c.state == IN_PROGRESS)
    .values(updated_at=bindparam("p_now"))
)


def lease_lost(claim: Claim) -> LeaseLost:
    """The error that rolls back an ``atomic()`` block whose claim was taken over."""
    return LeaseLost(
        f"the claim on {claim.task_name}/{claim.key} was taken over (its lease "
        f"expired at {claim.lease_expires_at:%Y-%m-%d %H:%M:%S} UTC); rolled back"
    )


def renew_in(connection: Connection, claim: Claim, lease_seconds: float, now: datetime) -> bool:
    """Push the claim's lease to ``lease_seconds`` from ``now`` (a heartbeat), in the
    caller's transaction; False if the claim is no longer this execution's (taken over,
    or completed with its result stored)."""
    lease = now + timedelta(seconds=lease_seconds)
    params = _claim_params(claim, p_lease=lease, p_now=now)
    renewed = connection.execute(_RENEW, params).rowcount == 1
    if renewed:
        claim.lease_expires_at = lease
    return bool(renewed)


def _claim_params(claim: Claim, **more: Any) -> dict[str, Any]:
    return {"p_task_name": claim.task_name, "p_key": claim.key, "p_token": claim.token, **more}


class Receipts:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._single = single_statement_engine(engine)
        self._claim = _claim_statement(insert)
        # Claim, complete, release and store_result: every keyed execution's hot path.
        self._hot = HotPath.for_engine(engine)
        if self._hot is not None:
            self._hot_claim = Statement(self._claim, engine)
            self._hot_complete = Statement(_COMPLETE, engine)
            self._hot_store_result = Statement(_STORE_RESULT, engine)
            self._hot_release = Statement(_RELEASE, engine)

    def close(self) -> None:
        """Close this process's hot-path connections."""
        if self._hot is not None:
            self._hot.close()

    def claim(  # noqa: PLR0917 - the columns of a claim, in order
        self,
        task_name: str,
        key: str,
        payload_hash: str,
        task_id: str,
        lease_seconds: float,
        now: datetime | None = None,
    ) -> Claim | Receipt:
        """Own the key, or get the receipt that says why not."""
        now = now or utcnow()
        lease = now + timedelta(seconds=lease_seconds)
        token = uuid.uuid4().hex
        params = {
            "p_task_name": task_name,
            "p_key": key,
            "p_payload_hash": payload_hash,
            "p_task_id": task_id,
            "p_token": token,
            "p_lease": lease,
            "p_now": now,
        }
        for _ in range(3):
            claims = self._claimed(params)
            if claims is not None:
                return Claim(task_name, key, token, task_id, claims, lease)
            existing = self.get(task_name, key)
            if existing is not None:
                return existing
            # Deleted (released, pruned) between the two statements: claim again.
        raise StoreContention(f"receipt {task_name}/{key} kept vanishing while claimed")

    def _claimed(self, params: dict[str, Any]) -> int | None:
        """Run the claim statement: the row's claim count if this claim owns it."""
        what = "claiming idempotency receipt"
        if self._hot is not None:
            found = self._hot.run(what, self._hot_claim, params, hot_rows, relaxed=True)
            return int(found[0][0]) if found else None
        row = run_statement(self._single, what, self._claim, params, first_row)
        return int(row.claims) if row is not None else None

    def complete(self, claim: Claim, result: str | None) -> bool:
        """Mark the receipt succeeded in its own statement; False if the claim was lost."""
        params = _claim_params(claim, p_result=result, p_now=utcnow())
        what = "completing receipt"
        if self._hot is not None:
            done = self._hot.run(what, self._hot_complete, params, hot_rowcount) == 1
        else:
            done = run_statement(self._single, what, _COMPLETE, params, rowcount) == 1
        claim.completed = done
        return done

    def complete_in(self, session: Session, claim: Claim) -> None:
        """Mark the receipt succeeded inside the caller's transaction (``atomic()``),
        its result pending (:data:`RESULT_PENDING`) until :meth:`store_result`: the
        lease stays, so a duplicate snoozes while this execution may still return.

        Raises :class:`LeaseLost` if another execution took the key over, so that the
        caller's writes roll back with it.
        """
        params = _claim_params(claim, p_now=utcnow())
        if session.connection().execute(_COMPLETE_PENDING, params).rowcount != 1:
            raise lease_lost(claim)

    def hold_in(self, session: Session, claim: Claim, lease_seconds: float | None) -> None:
        """Check, inside the caller's transaction, that the claim is still this
        execution's, and keep it in progress (``atomic()`` inside a step: the receipt
        completes when the body returns). With ``lease_seconds`` (a task with a
        heartbeat) the lease is renewed too. The row stays locked until the commit, so
        no takeover can come between the check and the caller's writes.

        Raises :class:`LeaseLost` if another execution took the key over.
        """
        connection = session.connection()
        if lease_seconds is not None:
            held = renew_in(connection, claim, lease_seconds, utcnow())
        else:
            held = connection.execute(_HOLD, _claim_params(claim, p_now=utcnow())).rowcount == 1
        if not held:
            raise lease_lost(claim)

    def store_result(self, claim: Claim, result: str | None) -> None:
        """After ``atomic()`` marked the receipt, record the value the body returned
        (``None``: none, or the body did not return) in place of :data:`RESULT_PENDING`,
        and end the lease."""
        params = _claim_params(claim, p_result=result)
        what = "storing receipt result"
        if self._hot is not None:
            self._hot.run(what, self._hot_store_result, params, hot_rowcount)
        else:
            run_statement(self._single, what, _STORE_RESULT, params, rowcount)
        claim.result_pending = False

    def release(self, claim: Claim) -> None:
        """Give the key back (the execution did not succeed). A succeeded receipt stays.
        (Like a claim, a release need not wait for PostgreSQL's WAL flush: one lost in
        a crash leaves a claim that its lease frees.)"""
        params = _claim_params(claim)
        what = "releasing idempotency receipt"
        if self._hot is not None:
            self._hot.run(what, self._hot_release, params, hot_rowcount, relaxed=True)
            return
        run_statement(self._single, what, _RELEASE, params, rowcount)

    def renew(self, claim: Claim, lease_seconds: float) -> bool:
        """Push the claim's lease to ``lease_seconds`` from now (a heartbeat); False if
        the claim is no longer this execution's (taken over, or completed)."""
        now = utcnow()
        lease = now + timedelta(seconds=lease_seconds)
        params = _claim_params(claim, p_lease=lease, p_now=now)
        renewed = (
            run_statement(self._single, "renewing a receipt's lease", _RENEW, params, rowcount) == 1
        )
        if renewed:
            claim.lease_expires_at = lease
        return renewed

    def get(self, task_name: str, key: str) -> Receipt | None:
        params = {"p_task_name": task_name, "p_key": key}
        row = run_statement(self._single, "reading idempotency receipt", _GET, params, first_row)
        return _receipt(row) if row is not None else None

    def list(
        self,
        task_name: str | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[Receipt]:
        query = select(receipts).order_by(receipts.c.updated_at.desc()).limit(limit)
        if task_name is not None:
            query = query.where(receipts.c.task_name == task_name)
        if state is not None:
            query = query.where(receipts.c.state == state)
        with unavailable_as("listing receipts"), self._engine.connect() as connection:
            return [_receipt(row) for row in connection.execute(query)]

    def page(  # noqa: PLR0917 - a listing's filters and its cursor
        self,
        task_name: str | None = None,
        key_prefix: str | None = None,
        state: str | None = None,
        after: tuple[str, str] | None = None,
        limit: int = 50,
        now: datetime | None = None,
    ) -> builtins.list[Receipt]:
        """One page in primary-key order, from the ``(task, key)`` ``after``. ``state``
        is ``in_progress``, ``succeeded`` or ``abandoned`` (in progress, lease run out)."""
        column = receipts.c
        where: list[Any] = []
        if state == "abandoned":
            where += [column.state == IN_PROGRESS, column.lease_expires_at < (now or utcnow())]
        elif state:
            where.append(column.state == state)
        query = by_task_and_key(receipts, task_name, key_prefix, after, limit, *where)
        with unavailable_as("listing receipts"), self._engine.connect() as connection:
            return [_receipt(row) for row in connection.execute(query)]

    def release_claim(self, task_name: str, key: str, task_id: str) -> bool:
        """Delete an in-progress claim by hand (its worker is gone): the next
        execution with the key runs. False if it is no longer that claim (completed,
        released, or taken over by another task id)."""
        statement = delete(receipts).where(
            receipts.c.task_name == task_name,
            receipts.c.key == key,
            receipts.c.task_id == task_id,
            receipts.c.state == IN_PROGRESS,
        )
        with unavailable_as("releasing a claim"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount) == 1

    def counts(
        self, task_name: str | None = None, now: datetime | None = None, cap: int | None = None
    ) -> dict[str, int]:
        """Receipts held: ``succeeded``, ``in_progress`` and, of those, ``abandoned``
        (their lease ran out: the next execution with that key takes it over).

        With ``cap``, each is counted up to ``cap + 1`` only (a count above ``cap`` means
        "more than cap"): at most that many index entries are read for each, where the
        exact counts read every receipt (of the task)."""
        now = now or utcnow()
        if cap is not None:
            return self._capped_counts(task_name, now, cap)
        abandoned = func.sum(case((receipts.c.lease_expires_at < now, 1), else_=0))
        query = select(receipts.c.state, func.count(), abandoned).group_by(receipts.c.state)
        if task_name is not None:
            query = query.where(receipts.c.task_name == task_name)
        found = {SUCCEEDED: 0, IN_PROGRESS: 0, "abandoned": 0}
        with unavailable_as("counting receipts"), self._engine.connect() as connection:
            for state, count, expired in connection.execute(query):
                found[state] = int(count)
                if state == IN_PROGRESS:
                    found["abandoned"] = int(expired or 0)
        return found

    def _capped_counts(self, task_name: str | None, now: datetime, cap: int) -> dict[str, int]:
        column = receipts.c

        def up_to_cap(*where: Any) -> Any:
            if task_name is not None:
                where = (*where, column.task_name == task_name)
            matching = select(column.state).where(*where).limit(cap + 1).subquery()
            return select(func.count()).select_from(matching).scalar_subquery()

        query = select(
            up_to_cap(column.state == SUCCEEDED),
            up_to_cap(column.state == IN_PROGRESS),
            up_to_cap(column.state == IN_PROGRESS, column.lease_expires_at < now),
        )
        with unavailable_as("counting receipts"), self._engine.connect() as connection:
            succeeded, in_progress, abandoned = connection.execute(query).one()
        return {SUCCEEDED: succeeded, IN_PROGRESS: in_progress, "abandoned": abandoned}

    def prune(self, ttl_seconds: float, now: datetime | None = None) -> int:
        """Delete succeeded receipts older than the TTL, and claims abandoned that long."""
        cutoff = (now or utcnow()) - timedelta(seconds=ttl_seconds)
        statement = delete(receipts).where(
            or_(
                and_(receipts.c.state == SUCCEEDED, receipts.c.completed_at < cutoff),
                and_(receipts.c.state == IN_PROGRESS, receipts.c.lease_expires_at < cutoff),
            )
        )
        with unavailable_as("pruning receipts"), self._engine.begin() as connection:
            return int(connection.execute(statement).rowcount)
