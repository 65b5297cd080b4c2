"""One contract, every limit backend: Redis (Lua) and the SQL store (SQLite and
PostgreSQL). Times are short leases and windows, waited for, never slept through."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable.limits.parts import Backend, Full, Part, Taken
from celery_reliable.limits.redis_slots import RedisSlots
from celery_reliable.store import migrate, store_for
from celery_reliable.testing import reset
from tests.conftest import fresh_store_url
from tests.support.celery_apps import new_redis_db
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Backend]:
    if request.param == "redis":
        slots = RedisSlots(new_redis_db(redis_url))
        yield slots
        slots.close()
        return
    url = fresh_store_url(request.param, request)
    app = Celery("limits-contract", set_as_current=False)
    app.conf.reliable_database_url = url
    store = store_for(app)
    assert store is not None
    migrate.upgrade(store.engine)
    yield store.limits
    reset(app)


def key() -> str:
    return f"concurrency:{uuid.uuid4().hex[:8]}"


def c(name: str, n: int, lease_ms: int = 60_000) -> Part:
    return Part("c", name, n, lease_ms)


def r(name: str, n: int, per_ms: int) -> Part:
    return Part("r", name, n, per_ms)


def take(backend: Backend, job: str, *parts: Part, since: int = 0) -> Taken | Full:
    return backend.take(job, since, f"{job}:{uuid.uuid4().hex[:6]}", list(parts))


def test_concurrency_takes_n_slots_then_says_how_long_to_wait(backend: Backend) -> None:
    k = key()
    tokens = []
    for n in range(3):
        token = f"job{n}:t"
        got = backend.take(f"job{n}", 0, token, [c(k, 3)])
        assert isinstance(got, Taken), got
        tokens.append((token, got.at_ms))
    over = take(backend, "job3", c(k, 3))
    assert isinstance(over, Full) and over.blocked == 0
    assert over.wait_ms >= 50
    assert backend.holders(c(k, 3)) == 3
    token, at = tokens[0]
    backend.give_back(token, at, [c(k, 3)])
    assert backend.holders(c(k, 3)) == 2
    # job3 waited first: it gets the freed slot.
    assert isinstance(take(backend, "job3", c(k, 3), since=over.since_ms), Taken)


def test_give_back_soon_frees_the_slot_without_being_asked_again(backend: Backend) -> None:
    """What an execution calls: Redis hands it to a thread of the process, the store
    gives it back there and then; either way the slot is free promptly."""
    k = key()
    got = backend.take("a", 0, "a:t", [c(k, 1)])
    assert isinstance(got, Taken)
    backend.give_back_soon("a:t", got.at_ms, [c(k, 1)], "tests.soon")
    wait_until(
        lambda: backend.holders(c(k, 1)) == 0, "the slot given back", timeout=5, interval=0.001
    )
    assert isinstance(take(backend, "b", c(k, 1)), Taken)


def test_the_oldest_waiter_goes_first(backend: Backend) -> None:
    k = key()
    first = backend.take("holder", 0, "holder:t", [c(k, 1)])
    assert isinstance(first, Taken)
    old = take(backend, "old", c(k, 1))
    assert isinstance(old, Full)
    backend.give_back("holder:t", first.at_ms, [c(k, 1)])
    time.sleep(0.005)  # a later millisecond: within one, jobs are ordered by their ids
    # A newer job finds the slot free but a job waiting before it: it waits, longer.
    newer = take(backend, "newer", c(k, 1))
    assert isinstance(newer, Full), newer
    assert newer.since_ms > old.since_ms
    assert isinstance(take(backend, "old", c(k, 1), since=old.since_ms), Taken)


def test_a_holder_that_never_gives_back_frees_its_slot_when_its_lease_ends(
    backend: Backend,
) -> None:
    k = key()
    assert isinstance(backend.take("dead", 0, "dead:t", [c(k, 1, lease_ms=400)]), Taken)
    started = time.monotonic()
    wait_until(
        lambda: isinstance(take(backend, "next", c(k, 1, lease_ms=400)), Taken),
        "the dead holder's slot freed by its lease",
        timeout=5,
        interval=0.05,
    )
    assert time.monotonic() - started >= 0.3


def test_renew_keeps_a_slot_past_its_first_lease(backend: Backend) -> None:
    k = key()
    part = c(k, 1, lease_ms=600)
    assert isinstance(backend.take("long", 0, "long:t", [part]), Taken)
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # the beats of a long body
        assert backend.renew("long:t", [part]) == 1
        assert isinstance(take(backend, "other", part), Full)
        time.sleep(0.1)
    assert backend.renew("nobody:t", [part]) == 0


def test_rate_allows_n_starts_per_window(backend: Backend) -> None:
    k = f"rate:{uuid.uuid4().hex[:8]}"
    part = r(k, 3, per_ms=1000)
    starts = [take(backend, f"s{n}", part) for n in range(3)]
    assert all(isinstance(s, Taken) for s in starts), starts
    over = take(backend, "s3", part)
    assert isinstance(over, Full)
    # It is told to come back when the first start leaves the window.
    assert 500 <= over.wait_ms <= 1100, over
    assert backend.give_back("x", 0, [part]) is None  # a rate holds nothing
    wait_until(
        lambda: isinstance(take(backend, "s3", part, since=over.since_ms), Taken),
        "a start leaving the window",
        timeout=5,
        interval=0.05,
    )


def test_several_limits_are_taken_all_or_none(backend: Backend) -> None:
    free, full = key(), key()
    assert isinstance(take(backend, "holder", c(full, 1)), Taken)
    got = take(backend, "both", c(free, 1), c(full, 1))
    assert isinstance(got, Full) and got.blocked == 1
    assert backend.holders(c(free, 1)) == 0  # nothing kept of the free one
    assert isinstance(take(backend, "alone", c(free, 1)), Taken)


def test_the_wait_follows_how_long_slots_are_held(backend: Backend) -> None:
    k = key()
    part = c(k, 1)
    got = backend.take("a", 0, "a:t", [part])
    assert isinstance(got, Taken)
    backend.give_back("a:t", got.at_ms - 5000, [part])  # held 5 s
    assert isinstance(backend.take("b", 0, "b:t", [part]), Taken)
    waiting = take(backend, "c", part)
    assert isinstance(waiting, Full)
    assert 4000 <= waiting.wait_ms <= 6000, waiting


def test_a_backend_that_is_down_says_so(request: Any) -> None:
    from celery_reliable.errors import LimitsUnavailable

    down = RedisSlots("redis://127.0.0.1:1/0")
    with pytest.raises(
        LimitsUnavailable,
        match=(
            r"^limits: taking a slot in Redis at redis://127\.0\.0\.1:1/0 failed "
            r"\(ConnectionError: .*\); is that Redis up\?"
        ),
    ):
        take(down, "job", c(key(), 1))
