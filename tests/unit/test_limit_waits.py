"""How long a concurrency waiter is told to wait, and what the measured pace learns:
``limits/parts.py``, which the SQL backend calls and the Redis script mirrors (the
contract suite runs both)."""

from __future__ import annotations

from typing import Any

import pytest

from celery_reliable.limits import slots
from celery_reliable.limits.parts import (
    EARLY,
    SLOWEST,
    Full,
    concurrency_wait,
    next_gap,
)


def test_the_next_in_line_waits_a_mean_hold() -> None:
    """Its turn is in the next round: about when a holder ends, whatever the pace."""
    for position in range(3):
        assert concurrency_wait(position, 3, 90.0, None) == 90.0
        assert concurrency_wait(position, 3, 90.0, 1000.0) == 90.0


def test_without_a_pace_a_waiter_further_back_waits_the_ideal() -> None:
    """No sample yet, or a pace no slower than the ideal: rounds of n mean holds, as
    if each freed slot were taken again at once (the earliest the turn can come)."""
    assert concurrency_wait(3, 3, 90.0, None) == 180.0
    assert concurrency_wait(10, 3, 90.0, None) == 90.0 * 4
    assert concurrency_wait(10, 3, 90.0, 20.0) == 90.0 * 4  # faster than ideal: ideal


def test_a_slower_pace_lengthens_the_wait_a_little_less_than_it_predicts() -> None:
    """The turn expected after (position + 1) gaps; told EARLY of that, so the waiter
    comes back a little before it rather than after."""
    wait = concurrency_wait(999, 3, 90.0, 60.0)  # twice the ideal gap (30 ms)
    assert wait == pytest.approx(EARLY * 1000 * 60.0)
    assert wait > 90.0 * (999 // 3 + 1)


def test_the_pace_counts_at_most_slowest_times_the_ideal() -> None:
    """A slow spell (waiters asleep, slots idle) cannot teach waits that keep slowing."""
    capped = concurrency_wait(999, 3, 90.0, 10_000.0)
    assert capped == pytest.approx(EARLY * 1000 * SLOWEST * 30.0)


def test_an_interval_is_a_sample_only_when_someone_was_turned_away() -> None:
    """Nobody refused since the last take: the demand, not the limit, set the
    interval (an idle hour teaches nothing)."""
    assert next_gap(40.0, 1_000, None, 3_601_000, 90.0, 3) == 40.0
    assert next_gap(40.0, 1_000, 900, 3_601_000, 90.0, 3) == 40.0  # refused before it
    assert next_gap(None, None, 900, 1_000, 90.0, 3) is None  # no take before


def test_a_sample_moves_the_mean_gap_and_is_capped() -> None:
    assert next_gap(None, 1_000, 1_010, 1_050, 90.0, 3) == 50.0  # the first sample
    assert next_gap(40.0, 1_000, 1_010, 1_050, 90.0, 3) == pytest.approx(40 * 0.8 + 50 * 0.2)
    # Refused, then taken an hour later: counted as SLOWEST ideal gaps at most.
    capped = next_gap(40.0, 1_000, 1_010, 3_601_000, 90.0, 3)
    assert capped == pytest.approx(40 * 0.8 + SLOWEST * 30.0 * 0.2)


def test_slots_take_tells_the_wait_as_the_backend_said(monkeypatch: Any) -> None:
    """No random part added on top: the backend keeps a free slot for the waiter from
    when it said to come back (parts.py), and waiters at different places in line are
    told different times already."""

    class Always:
        def take(self, *args: Any) -> Full:
            return Full(1234, 0, 42)

    class Limits:
        def keys(self, args: Any, kwargs: Any) -> list[str]:
            return ["concurrency:erp"]

        limits = [type("Bound", (), {"limit": type("L", (), {"describe": lambda s: "c"})()})]

    task = type(
        "Task",
        (),
        {
            "_reliable_slots": slots.ClassSlots(Limits(), (("c", 1, 1000),)),  # type: ignore[arg-type]
            "name": "t",
            "app": None,
        },
    )()
    monkeypatch.setattr(slots, "backend_for", lambda app: Always())
    told = {slots.take(task, "job", (), {}, 0).seconds for _ in range(20)}  # type: ignore[union-attr]
    assert told == {1.234}
