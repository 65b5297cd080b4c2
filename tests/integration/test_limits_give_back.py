"""The Redis backend's give back as an execution makes it (``give_back_soon``: sent,
its answer read by the next one or at exit; ``limits/redis_slots.py``), on a real
Redis: it frees the slot at once, a forked child keeps to its own connection and
answers, and one sent while Redis is down is logged once while the slot frees itself
when its lease ends. Waits have deadlines."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_reliable.limits.parts import Full, Part, Taken
from celery_reliable.limits.redis_slots import RedisSlots
from tests.support.celery_apps import new_redis_db
from tests.support.servers import RedisServer
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def slots(redis_url: str) -> Iterator[RedisSlots]:
    made = RedisSlots(new_redis_db(redis_url))
    yield made
    made.close()


def part(n: int = 1, lease_ms: int = 60_000) -> Part:
    return Part("c", f"concurrency:{uuid.uuid4().hex[:8]}", n, lease_ms)


def taken(slots: RedisSlots, job: str, held: Part) -> Taken:
    got = slots.take(job, 0, f"{job}:t", [held])
    assert isinstance(got, Taken), got
    return got


def test_a_give_back_frees_the_slot_at_once_without_its_answer_read(slots: RedisSlots) -> None:
    """Nothing else is asked of the backend after it: the slot is free once the write
    reaches Redis, and the next job takes it."""
    held = part()
    got = taken(slots, "first", held)
    began = time.monotonic()
    slots.give_back_soon("first:t", got.at_ms, [held], "tests.first")
    handed = time.monotonic() - began
    wait_until(lambda: slots.holders(held) == 0, "the slot given back", timeout=5, interval=0.001)
    freed = time.monotonic() - began
    assert handed < 0.05, handed  # generous for a loaded machine: a write, no round trip
    assert freed < 1.0, freed  # the same: well under a millisecond when idle
    taken(slots, "second", held)
    assert slots.settle(5)  # its answer, read: nothing to send again, nothing logged


def test_the_mean_hold_time_is_kept_as_before(slots: RedisSlots) -> None:
    """The same script as a synchronous give back: the wait a full limit tells a job
    still follows how long slots are held."""
    held = part()
    got = taken(slots, "a", held)
    slots.give_back_soon("a:t", got.at_ms - 5000, [held], "tests.mean")  # held 5 s
    assert slots.settle(5)
    taken(slots, "b", held)
    waiting = slots.take("c", 0, "c:t", [held])
    assert isinstance(waiting, Full)
    assert 4000 <= waiting.wait_ms <= 6000, waiting


def test_a_rate_gives_nothing_back(slots: RedisSlots) -> None:
    rate = Part("r", f"rate:{uuid.uuid4().hex[:8]}", 2, 1000)
    got = slots.take("r1", 0, "r1:t", [rate])
    assert isinstance(got, Taken)
    slots.give_back_soon("r1:t", got.at_ms, [rate], "tests.rate")
    assert slots.settle(5)
    assert slots.holders(rate) == 1  # the start stays in its window


@given(
    n=st.integers(min_value=1, max_value=3),
    steps=st.lists(st.sampled_from(["take", "soon", "now"]), min_size=1, max_size=25),
)
@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_mix_of_takes_and_give_backs_adds_up(
    slots: RedisSlots, n: int, steps: list[str]
) -> None:
    """Takes, give backs sent without waiting and synchronous ones, in any order: never
    more than ``n`` held, and Redis holds exactly the slots taken and not given back."""
    held = part(n)
    holding: list[tuple[str, int]] = []
    for number, step in enumerate(steps):
        if step == "take":
            got = slots.take(f"j{number}", 0, f"j{number}:t", [held])
            if isinstance(got, Taken):
                holding.append((f"j{number}:t", got.at_ms))
            assert len(holding) <= n
        elif holding:
            token, at = holding.pop(0)
            if step == "soon":
                slots.give_back_soon(token, at, [held], "tests.mix")
            else:
                slots.give_back(token, at, [held])
    assert slots.settle(5)
    assert slots.holders(held) == len(holding)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_keeps_to_its_own_connection_and_answers(slots: RedisSlots) -> None:
    """A prefork pool process is forked from a parent that may have an answer unread on
    its connection: the child sends on a connection of its own, never reads the
    parent's answer, and does not wait for it when it exits."""
    held = part(n=3)
    got = taken(slots, "parent", held)
    slots.give_back_soon("parent:t", got.at_ms, [held], "tests.parent")  # answer unread
    kept = taken(slots, "kept", held)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            child = slots.take("child", 0, "child:t", [held])
            assert isinstance(child, Taken)
            slots.give_back_soon("child:t", child.at_ms, [held], "tests.child")
            began = time.monotonic()
            settled = slots.settle(5)
            waited = time.monotonic() - began
            os.write(write, f"{settled} {slots.holders(held)} {waited < 1}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    answer = os.read(read, 100).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answer == "True 1 True", answer  # only "kept" holds: the child's slot freed
    assert slots.settle(5)  # the parent's answer still there for the parent
    slots.give_back_soon("kept:t", kept.at_ms, [held], "tests.parent")
    assert slots.settle(5)
    assert slots.holders(held) == 0


def test_a_give_back_while_redis_is_down_is_logged_once_and_the_lease_frees_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stopped before the give back, on a connection kept from an earlier one:
    the write may still go into the socket's buffer, so the failure shows when the
    process reads the answer (its next give back, or ``settle`` at exit). It is sent
    again once, fails, and is logged once. Redis back with its data: the slot is still
    held, until its lease ends."""
    lease_ms = 3000
    server = RedisServer(persistent=True)  # the slot must outlive the restart
    server.start()
    slots = RedisSlots(f"{server.url}/0")
    try:
        warm = part()
        got = taken(slots, "warm", warm)
        slots.give_back_soon("warm:t", got.at_ms, [warm], "tests.warm")
        assert slots.settle(5)  # the give backs' connection is open, nothing unread
        held = part(lease_ms=lease_ms)
        got = taken(slots, "holder", held)
        took = time.monotonic()
        server.stop()
        with caplog.at_level(logging.WARNING, logger="celery_reliable.limits"):
            slots.give_back_soon("holder:t", got.at_ms, [held], "tests.down")
            slots.settle(5)

            def said() -> list[str]:
                return [r.getMessage() for r in caplog.records if "tests.down" in r.getMessage()]

            assert said(), "the failed give back logged"
            server.start()
            assert slots.holders(held) == 1  # not given back: it failed, and said so
            wait_until(
                lambda: isinstance(slots.take("next", 0, "next:t", [held]), Taken),
                "the slot freed by its lease",
                timeout=15,
                interval=0.05,
            )
        assert time.monotonic() - took >= lease_ms / 1000 - 0.2
        (message,) = said()
        assert message.startswith(
            f"task tests.down: limits: giving a slot back in Redis at {server.url}/0 failed "
            "(ConnectionError: "
        ), message
        assert message.endswith("; its slots free themselves when their lease ends"), message
    finally:
        slots.close()
        server.remove()


def test_a_give_back_answered_noscript_is_sent_again(slots: RedisSlots) -> None:
    """SCRIPT FLUSH between the write and the reading of its answer: the give back did
    not run; reading the answer loads the scripts and sends it again."""
    held = part()
    got = taken(slots, "a", held)
    slots.client.script_flush()
    slots.give_back_soon("a:t", got.at_ms, [held], "tests.noscript")
    assert slots.holders(held) == 1  # NOSCRIPT: nothing given back yet
    assert slots.settle(5)
    assert slots.holders(held) == 0
