"""One contract, every limit backend: Redis (Lua) and the SQL store (SQLite and
PostgreSQL). Times are short leases and windows, waited for, never slept through."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable.limits.parts import EARLY, LATE_MS, SLOWEST, Backend, Full, Part, Taken
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
    """The next in line keeps a free slot from the moment it is told to wait: a newer
    job that finds the slot free first waits behind it."""
    k = key()
    first = backend.take("holder", 0, "holder:t", [c(k, 1)])
    assert isinstance(first, Taken)
    old = take(backend, "old", c(k, 1))
    assert isinstance(old, Full)
    backend.give_back("holder:t", first.at_ms, [c(k, 1)])
    time.sleep(0.005)  # a later millisecond: within one, jobs are ordered by their ids
    # A newer job finds the slot free but a job waiting before it: it waits.
    newer = take(backend, "newer", c(k, 1))
    assert isinstance(newer, Full), newer
    assert newer.since_ms > old.since_ms
    assert isinstance(take(backend, "old", c(k, 1), since=old.since_ms), Taken)


def held_for(backend: Backend, part: Part, ms: int) -> None:
    """A slot of ``part`` taken and given back as if held ``ms``: its mean hold."""
    got = backend.take("warm", 0, "warm:t", [part])
    assert isinstance(got, Taken), got
    backend.give_back("warm:t", got.at_ms - ms, [part])


def test_a_waiter_further_back_keeps_no_free_slot_while_it_sleeps(backend: Backend) -> None:
    """A waiter that is not next in line keeps nothing until it is due: a slot that
    frees while it sleeps goes to whoever asks. Once back it goes before every newer
    job, even one that asks first."""
    part = c(key(), 1)
    held_for(backend, part, 500)
    holder = backend.take("holder", 0, "holder:t", [part])
    assert isinstance(holder, Taken)
    head = take(backend, "head", part)
    time.sleep(0.005)
    told = time.monotonic()
    back = take(backend, "back", part)  # second in line: asleep until due
    assert isinstance(head, Full) and isinstance(back, Full)
    assert back.wait_ms >= 2 * 500, back  # a round of holds behind the head
    backend.give_back("holder:t", holder.at_ms, [part])
    got = backend.take("head", head.since_ms, "head:t", [part])
    assert isinstance(got, Taken), got
    backend.give_back("head:t", got.at_ms, [part])
    # Free again, "back" asleep: a newer job takes the slot rather than leave it idle.
    newer = backend.take("newer", 0, "newer:t", [part])
    assert isinstance(newer, Taken), newer
    time.sleep(max(0.0, told + back.wait_ms / 1000 + 0.05 - time.monotonic()))
    again = take(backend, "back", part, since=back.since_ms)  # due, back: still held
    assert isinstance(again, Full) and again.since_ms == back.since_ms
    backend.give_back("newer:t", newer.at_ms, [part])
    time.sleep(0.005)
    assert isinstance(take(backend, "newest", part), Full)  # asks first, waits
    assert isinstance(take(backend, "back", part, since=back.since_ms), Taken)


def test_an_overdue_waiter_keeps_a_free_slot_at_most_late_ms(backend: Backend) -> None:
    """The bound on a slot left idle for an absent waiter: the next in line keeps a
    free slot from newer jobs until ``LATE_MS`` after it was due, not longer. When it
    does come back, it still goes first."""
    part = c(key(), 1)
    held_for(backend, part, 100)
    holder = backend.take("holder", 0, "holder:t", [part])
    assert isinstance(holder, Taken)
    told = time.monotonic()
    late = take(backend, "late", part)
    assert isinstance(late, Full) and late.wait_ms < 500, late
    due = told + late.wait_ms / 1000
    backend.give_back("holder:t", holder.at_ms, [part])
    time.sleep(0.005)
    assert isinstance(take(backend, "newer", part), Full)  # kept for the next in line
    time.sleep(max(0.0, due + LATE_MS / 1000 / 2 - time.monotonic()))
    assert isinstance(take(backend, "newer", part), Full)  # due, late: still kept
    time.sleep(max(0.0, due + LATE_MS / 1000 + 0.25 - time.monotonic()))
    newer = backend.take("newer", 0, "newer:t", [part])
    assert isinstance(newer, Taken), newer  # overslept: the slot no longer waits for it
    again = take(backend, "late", part, since=late.since_ms)  # back, the slot busy
    assert isinstance(again, Full)
    backend.give_back("newer:t", newer.at_ms, [part])
    time.sleep(0.005)
    assert isinstance(take(backend, "newest", part), Full)
    assert isinstance(take(backend, "late", part, since=late.since_ms), Taken)


def slow_turnover(backend: Backend, part: Part, idle: float) -> float:
    """Eight takes of ``part`` (n=1), each given back as if held 20 ms more than it was
    (so two keys get about the same mean hold, however loaded the machine), the next
    take ``idle`` s after the give back, a job turned away in each interval (so it
    counts). Returns the longest hold, as long as or longer than the backend's."""
    took = time.monotonic()
    holder = backend.take("h", 0, "h:t", [part])
    assert isinstance(holder, Taken)
    token, at, longest = "h:t", holder.at_ms, 0.0
    for n in range(8):
        waiting = take(backend, f"r{n}", part)
        assert isinstance(waiting, Full), waiting
        backend.give_back(token, at - 20, [part])
        longest = max(longest, time.monotonic() - took + 0.02)
        time.sleep(idle)
        token = f"r{n}:t"
        took = time.monotonic()
        got = backend.take(f"r{n}", waiting.since_ms, token, [part])
        assert isinstance(got, Taken), got
        at = got.at_ms
    backend.give_back(token, at - 20, [part])
    return max(longest, time.monotonic() - took + 0.02) * 1000


def deep_wait(backend: Backend, part: Part) -> Full:
    """The wait of a job with nine waiters ahead of it and the slot held."""
    assert isinstance(backend.take("holder", 0, "holder:t", [part]), Taken)
    for n in range(9):
        assert isinstance(take(backend, f"w{n}", part), Full)
        time.sleep(0.002)
    deep = take(backend, "deep", part)
    assert isinstance(deep, Full)
    return deep


def test_a_deep_waiters_wait_follows_the_observed_turnover(backend: Backend) -> None:
    """The same holds (~20 ms) and the same place (ten takes ahead), but slots taken
    again 0.15 s after they free instead of at once: the deep waiter is told to come
    back later, by the pace measured, never more than ``SLOWEST`` times the ideal (at
    most ``SLOWEST`` mean holds between takes, n being 1)."""
    fast, slow = c(key(), 1), c(key(), 1)
    slow_turnover(backend, fast, idle=0.0)
    longest = slow_turnover(backend, slow, idle=0.15)
    quick, paced = deep_wait(backend, fast), deep_wait(backend, slow)
    assert paced.wait_ms >= 2 * quick.wait_ms, (quick, paced)
    assert paced.wait_ms <= EARLY * 10 * SLOWEST * longest, (paced, longest)


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
