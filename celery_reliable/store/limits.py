"""Global limits kept in the store (``reliable_limits_url = "store"``): the same
contract as the Redis backend (``limits/redis_slots.py``), for brokers without Redis.

A take is one transaction. It first writes the row of each limit key it needs (in key
order, so two takes never wait on each other in a circle): on PostgreSQL that row lock,
on SQLite the database's write lock, serializes every take of a key, so the count it
reads is the count it writes against. Then, per limit: expired slots and forgotten
waiters go, the line is read, and either every slot is taken or the job is lined up
where a limit was full. Times are the workers' clocks (epoch ms): keep them in sync, as
any lease needs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from celery_reliable.errors import LimitsUnavailable, StoreUnavailable
from celery_reliable.limits.parts import Full, Part, Taken, not_given_back, tiebreak
from celery_reliable.store.engine import unavailable_as
from celery_reliable.store.schema import limit_keys, limit_slots, limit_waiters

#: The mean hold time assumed before a key's first slot is given back (ms).
DEFAULT_MEAN_MS = 1000.0
#: A waiter is forgotten this long after it was told to come back (ms).
FORGET_AFTER_MS = 30_000


def _now_ms() -> int:
    return int(time.time() * 1000)


class LimitRows:
    """The store as a limit backend."""

    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._insert = insert
        touch = insert(limit_keys).values(
            key=bindparam("p_key"), mean_hold_ms=None, touched_ms=bindparam("p_now")
        )
        self._touch = touch.on_conflict_do_update(
            index_elements=[limit_keys.c.key], set_={"touched_ms": touch.excluded.touched_ms}
        )
        wait = insert(limit_waiters).values(
            key=bindparam("p_key"),
            job=bindparam("p_job"),
            line_us=bindparam("p_since"),
            forget_ms=bindparam("p_forget"),
        )
        # A job keeps its place in line: only when it is forgotten changes.
        self._line_up = wait.on_conflict_do_update(
            index_elements=[limit_waiters.c.key, limit_waiters.c.job],
            set_={"forget_ms": wait.excluded.forget_ms},
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
        for key in sorted({part.key for part in parts}):
            connection.execute(self._touch, {"p_key": key, "p_now": now})
        # The place in line, as in Redis: microseconds, the last three digits the job's.
        line = since * 1000 + tiebreak(me)
        wait, blocked = 0.0, []
        for index, part in enumerate(parts):
            connection.execute(
                delete(limit_slots).where(
                    and_(limit_slots.c.key == part.key, limit_slots.c.until_ms < now)
                )
            )
            connection.execute(
                delete(limit_waiters).where(
                    and_(limit_waiters.c.key == part.key, limit_waiters.c.forget_ms < now)
                )
            )
            mine = connection.execute(
                select(limit_waiters.c.line_us).where(
                    and_(limit_waiters.c.key == part.key, limit_waiters.c.job == me)
                )
            ).scalar()
            place = line if mine is None else int(mine)
            ahead = int(
                connection.execute(
                    select(func.count()).where(
                        and_(limit_waiters.c.key == part.key, limit_waiters.c.line_us < place)
                    )
                ).scalar_one()
            )
            holding = int(
                connection.execute(
                    select(func.count()).where(limit_slots.c.key == part.key)
                ).scalar_one()
            )
            free = part.n - holding
            if free > ahead:
                continue
            position = ahead - free
            wait = max(wait, self._wait(connection, part, position, holding, now))
            blocked.append(index)
        if blocked:
            wait = max(wait, 50.0)
            for index in blocked:
                connection.execute(
                    self._line_up,
                    {
                        "p_key": parts[index].key,
                        "p_job": me,
                        "p_since": line,
                        "p_forget": now + int(wait) + FORGET_AFTER_MS,
                    },
                )
            return Full(int(wait), blocked[0], since)
        for part in parts:
            connection.execute(
                self._insert(limit_slots).values(
                    key=part.key, token=token, at_ms=now, until_ms=now + part.span_ms
                )
            )
            connection.execute(
                delete(limit_waiters).where(
                    and_(limit_waiters.c.key == part.key, limit_waiters.c.job == me)
                )
            )
        return Taken(now)

    def _wait(
        self, connection: Connection, part: Part, position: int, holding: int, now: int
    ) -> float:
        """How long until the slot of this job's turn frees (as redis_slots.py says)."""
        if part.kind == "c":
            mean = connection.execute(
                select(limit_keys.c.mean_hold_ms).where(limit_keys.c.key == part.key)
            ).scalar()
            return float(mean or DEFAULT_MEAN_MS) * (position // part.n + 1)
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
