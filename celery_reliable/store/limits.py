"""Global limits kept in the store (``reliable_limits_url = "store"``): the same
contract as the Redis backend (``limits/redis_slots.py``), for brokers without Redis.

A take is one transaction. It first writes the row of each limit key it needs (in key
order, so two takes never wait on each other in a circle): on PostgreSQL that row lock,
on SQLite the database's write lock, serializes every take of a key, so the count it
reads is the count it writes against. Then, per limit: expired slots and forgotten
waiters go, the line is read (those of the ``LOOK`` oldest ahead that keep a free
slot, by the index on key and place), and either every slot is taken (a concurrency
take records the pace on the key's row) or the job is lined up where a limit was full
(the refusal recorded on that row too). Who may take and how long a waiter waits are
``limits/parts.py``'s, which the Redis script mirrors. Times are the workers' clocks
(epoch ms): keep them in sync, as any lease needs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, String, and_, bindparam, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from celery_reliable.errors import LimitsUnavailable, StoreUnavailable
from celery_reliable.limits.parts import (
    DEFAULT_MEAN_MS,
    FORGET_AFTER_MS,
    LATE_MS,
    LOOK,
    MIN_WAIT_MS,
    Full,
    Part,
    Taken,
    concurrency_wait,
    next_gap,
    not_given_back,
    tiebreak,
)
from celery_reliable.store.engine import unavailable_as
from celery_reliable.store.schema import limit_keys, limit_slots, limit_waiters


def _now_ms() -> int:
    return int(time.time() * 1000)


class LimitRows:
    """The store as a limit backend."""

    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        touch = insert(limit_keys).values(
            key=bindparam("p_key"), mean_hold_ms=None, touched_ms=bindparam("p_now")
        )
        # The key's row as the lock left it: what a wait and the pace need, with no
        # round trip of its own.
        self._touch = touch.on_conflict_do_update(
            index_elements=[limit_keys.c.key], set_={"touched_ms": touch.excluded.touched_ms}
        ).returning(
            limit_keys.c.mean_hold_ms,
            limit_keys.c.take_gap_ms,
            limit_keys.c.last_take_ms,
            limit_keys.c.refused_ms,
        )
        wait = insert(limit_waiters).values(
            key=bindparam("p_key"),
            job=bindparam("p_job"),
            line_us=bindparam("p_since"),
            forget_ms=bindparam("p_forget"),
            keep_ms=bindparam("p_keep"),
        )
        # A take's statements, built once: on every take, building them again cost
        # about as much as running them (SQLite).
        key, job = bindparam("p_key", type_=String()), bindparam("p_job", type_=String())
        place = bindparam("p_place", type_=BigInteger())
        slot_key, waiter_key = limit_slots.c.key == key, limit_waiters.c.key == key
        self._expire = delete(limit_slots).where(
            and_(slot_key, limit_slots.c.until_ms < bindparam("p_now"))
        )
        self._forget = delete(limit_waiters).where(
            and_(waiter_key, limit_waiters.c.forget_ms < bindparam("p_now"))
        )
        self._mine = select(limit_waiters.c.line_us).where(
            and_(waiter_key, limit_waiters.c.job == job)
        )
        self._holding = select(func.count()).where(slot_key)
        self._ahead = select(func.count()).where(and_(waiter_key, limit_waiters.c.line_us < place))
        self._hold = insert(limit_slots).values(
            key=key,
            token=bindparam("p_token"),
            at_ms=bindparam("p_now"),
            until_ms=bindparam("p_until"),
        )
        self._leave_line = delete(limit_waiters).where(and_(waiter_key, limit_waiters.c.job == job))
        oldest = (
            select(limit_waiters.c.forget_ms, limit_waiters.c.keep_ms)
            .where(and_(waiter_key, limit_waiters.c.line_us < place))
            .order_by(limit_waiters.c.line_us)
            .limit(LOOK)
            .subquery()
        )
        due = oldest.c.forget_ms - FORGET_AFTER_MS
        now = bindparam("p_now", type_=BigInteger())
        self._keeping_count = (
            select(func.count())
            .select_from(oldest)
            .where(and_(func.coalesce(oldest.c.keep_ms, due) <= now, due >= now - LATE_MS))
        )
        self._pace = (
            update(limit_keys)
            .where(limit_keys.c.key == key)
            .values(take_gap_ms=bindparam("p_gap"), last_take_ms=bindparam("p_now"))
        )
        # A job keeps its place in line: only when it is forgotten and from when it
        # keeps a free slot change.
        self._line_up = wait.on_conflict_do_update(
            index_elements=[limit_waiters.c.key, limit_waiters.c.job],
            set_={"forget_ms": wait.excluded.forget_ms, "keep_ms": wait.excluded.keep_ms},
        )

    def _doing(self, what: str) -> Any:
        return unavailable_as(f"limits: {what} in the store")

    def take(self, me: str, since_ms: int, token: str, parts: Sequence[Part]) -> Taken | Full:
        now = _now_ms()
        since = since_ms if 0 < since_ms <= now else now
        try:
            with self._doing("taking a slot"), self._engine.begin() as connection:
                return self._take(connection, me, since, token, parts, now)
        except StoreUnavailable as exc:
            raise LimitsUnavailable(str(exc)) from exc

    def _take(  # noqa: PLR0917 - one take's inputs
        self,
        connection: Connection,
        me: str,
        since: int,
        token: str,
        parts: Sequence[Part],
        now: int,
    ) -> Taken | Full:
        rows = {
            key: connection.execute(self._touch, {"p_key": key, "p_now": now}).one()
            for key in sorted({part.key for part in parts})
        }
        # The place in line, as in Redis: microseconds, the last three digits the job's.
        line = since * 1000 + tiebreak(me)
        wait, blocked, head = 0.0, [], []
        for index, part in enumerate(parts):
            at = {"p_key": part.key, "p_now": now}
            connection.execute(self._expire, at)
            connection.execute(self._forget, at)
            mine = connection.execute(self._mine, {"p_key": part.key, "p_job": me}).scalar()
            place = line if mine is None else int(mine)
            holding = int(connection.execute(self._holding, at).scalar_one())
            free = part.n - holding
            if free > 0 and self._keeping(connection, part.key, place, now) < free:
                continue
            ahead = connection.execute(self._ahead, {"p_key": part.key, "p_place": place})
            position = max(int(ahead.scalar_one()) - free, 0)
            wait = max(wait, self._wait(connection, part, position, holding, now, rows[part.key]))
            blocked.append(index)
            head.append(position < part.n)
        if blocked:
            wait = float(int(max(wait, MIN_WAIT_MS)))
            for index, next_in_line in zip(blocked, head, strict=True):
                connection.execute(
                    self._line_up,
                    {
                        "p_key": parts[index].key,
                        "p_job": me,
                        "p_since": line,
                        "p_forget": now + int(wait) + FORGET_AFTER_MS,
                        # Next in line keeps a free slot from now on; further back,
                        # once it is due.
                        "p_keep": now if next_in_line else now + int(wait),
                    },
                )
            return Full(int(wait), blocked[0], since)
        for part in parts:
            connection.execute(
                self._hold,
                {"p_key": part.key, "p_token": token, "p_now": now, "p_until": now + part.span_ms},
            )
            if part.kind == "c":
                self._record_take(connection, part, now, rows[part.key])
            connection.execute(self._leave_line, {"p_key": part.key, "p_job": me})
        return Taken(now)

    def _keeping(self, connection: Connection, key: str, place: int, now: int) -> int:
        """How many of the ``LOOK`` oldest waiters ahead keep a free slot now: from
        their ``keep_ms`` (once due when NULL) until ``LATE_MS`` after they were due
        (``limits/parts.py``)."""
        found = connection.execute(
            self._keeping_count, {"p_key": key, "p_place": place, "p_now": now}
        ).scalar_one()
        return int(found)

    def _record_take(self, connection: Connection, part: Part, now: int, row: Any) -> None:
        """The pace after a concurrency take (``parts.next_gap``)."""
        gap = next_gap(
            row.take_gap_ms,
            row.last_take_ms,
            row.refused_ms,
            now,
            float(row.mean_hold_ms or DEFAULT_MEAN_MS),
            part.n,
        )
        connection.execute(self._pace, {"p_key": part.key, "p_gap": gap, "p_now": now})

    def _wait(  # noqa: PLR0917 - one limit's state
        self, connection: Connection, part: Part, position: int, holding: int, now: int, row: Any
    ) -> float:
        """How long until the slot of this job's turn frees (as redis_slots.py says)."""
        if part.kind == "c":
            connection.execute(
                update(limit_keys).where(limit_keys.c.key == part.key).values(refused_ms=now)
            )
            mean = float(row.mean_hold_ms or DEFAULT_MEAN_MS)
            return concurrency_wait(position, part.n, mean, row.take_gap_ms)
        if holding == 0:
            return float(part.span_ms * (position // part.n + 1))
        until = connection.execute(
            select(limit_slots.c.until_ms)
            .where(limit_slots.c.key == part.key)
            .order_by(limit_slots.c.at_ms, limit_slots.c.token)
            .offset(position % holding)
            .limit(1)
        ).scalar_one()
        return float(int(until) + part.span_ms * (position // holding) - now)

    def give_back(self, token: str, at_ms: int, parts: Sequence[Part]) -> None:
        held = [part for part in parts if part.kind == "c"]
        if not held:
            return
        now = _now_ms()
        hold = float(max(now - at_ms, 0))
        try:
            with self._doing("giving a slot back"), self._engine.begin() as connection:
                for part in held:
                    gone = connection.execute(
                        delete(limit_slots).where(
                            and_(limit_slots.c.key == part.key, limit_slots.c.token == token)
                        )
                    ).rowcount
                    if gone:
                        mean = limit_keys.c.mean_hold_ms
                        connection.execute(
                            update(limit_keys)
                            .where(limit_keys.c.key == part.key)
                            .values(
                                mean_hold_ms=func.coalesce(mean * 0.8 + hold * 0.2, hold),
                                touched_ms=now,
                            )
                        )
        except StoreUnavailable as exc:
            raise LimitsUnavailable(str(exc)) from exc

    def give_back_soon(self, token: str, at_ms: int, parts: Sequence[Part], task_name: str) -> None:
        """Here and now, one transaction: a write left for later would buy little (on
        SQLite it would wait for the same write lock as the next take)."""
        try:
            self.give_back(token, at_ms, parts)
        except LimitsUnavailable as exc:
            not_given_back([task_name], exc)

    def renew(self, token: str, parts: Sequence[Part]) -> int:
        held = [part for part in parts if part.kind == "c"]
        if not held:
            return 0
        now = _now_ms()
        kept = 0
        try:
            with self._doing("renewing a slot"), self._engine.begin() as connection:
                for part in held:
                    kept += connection.execute(
                        update(limit_slots)
                        .where(and_(limit_slots.c.key == part.key, limit_slots.c.token == token))
                        .values(until_ms=now + part.span_ms)
                    ).rowcount
        except StoreUnavailable as exc:
            raise LimitsUnavailable(str(exc)) from exc
        return kept

    def holders(self, part: Part) -> int:
        query = select(func.count()).where(
            and_(limit_slots.c.key == part.key, limit_slots.c.until_ms >= _now_ms())
        )
        try:
            with self._doing("counting holders"), self._engine.connect() as connection:
                return int(connection.execute(query).scalar_one())
        except StoreUnavailable as exc:
            raise LimitsUnavailable(str(exc)) from exc

    def prune(self, older_than_seconds: float) -> int:
        """Keys untouched for that long, with what is left of them."""
        cutoff = _now_ms() - int(older_than_seconds * 1000)
        with self._doing("pruning limits"), self._engine.begin() as connection:
            stale = select(limit_keys.c.key).where(limit_keys.c.touched_ms < cutoff)
            connection.execute(delete(limit_slots).where(limit_slots.c.key.in_(stale)))
            connection.execute(delete(limit_waiters).where(limit_waiters.c.key.in_(stale)))
            return int(
                connection.execute(
                    delete(limit_keys).where(limit_keys.c.touched_ms < cutoff)
                ).rowcount
            )

    def close(self) -> None:
        """The store's engine is the store's to close."""
