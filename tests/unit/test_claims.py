"""How a job waits for an idempotency key another execution holds (``Busy.retry_in``)."""

from __future__ import annotations

from datetime import datetime

import pytest

from celery_reliable.claims import Busy, _load_result, encode_result
from celery_reliable.store import Receipt
from celery_reliable.store.receipts import RESULT_PENDING


def _busy(remaining: float) -> Busy:
    now = datetime(2026, 1, 1)
    receipt = Receipt("t", "k", "h", "in_progress", "id", 1, now, None, now, now, None)
    return Busy(receipt, remaining)


def snooze_times(lease: float, max_snoozes: int) -> list[float]:
    """The times a redelivered job looks again, until the holder's lease has ended."""
    t, times = 0.0, []
    for done in range(max_snoozes):
        t += _busy(lease - t).retry_in(done, max_snoozes)
        times.append(t)
        if t > lease:
            break
    return times


@pytest.mark.parametrize("lease", [0.5, 6, 17, 65, 305, 1000, 1805, 3605, 86405])
@pytest.mark.parametrize("max_snoozes", [3, 10, 20])
def test_the_snoozes_reach_past_any_lease(lease: float, max_snoozes: int) -> None:
    times = snooze_times(lease, max_snoozes)
    assert times[-1] > lease, times  # the last look finds the lease ended: a takeover
    assert len(times) <= max_snoozes


@pytest.mark.parametrize("lease", [6, 17, 65])
def test_a_short_lease_is_looked_at_soon_and_not_long_after_it_ends(lease: float) -> None:
    times = snooze_times(lease, 10)
    assert times[0] == 1.0 and times[1] == 3.0  # 1 s, then 2 s
    assert times[-1] <= lease + 1.0 + 1e-9


def test_a_long_lease_is_spread_over_the_snoozes_left() -> None:
    # A one-hour task (lease 3605 s): doubling from 1 s would stop at 1023 s, short of
    # the lease, and the job would run out of snoozes before a takeover.
    times = snooze_times(3605, 10)
    assert len(times) == 10
    assert times[0] == pytest.approx(360.6)
    assert times[-1] == pytest.approx(3606)


def test_a_large_max_snoozes_does_not_overflow() -> None:
    assert _busy(100).retry_in(0, 2000) == 1.0
    assert _busy(100).retry_in(1500, 2000) == pytest.approx(101.0)


def _receipt(state: str, result: str | None) -> Receipt:
    now = datetime(2026, 1, 1)
    return Receipt("t", "k", "h", state, "id", 1, now, result, now, now, now)


def test_the_pending_mark_is_never_a_stored_result() -> None:
    """atomic()'s mark cannot be an encoded result (JSON), and reads back as None."""
    assert RESULT_PENDING not in {encode_result("t", v) for v in ("<pending>", "", 0, [], {})}
    pending = _receipt("succeeded", RESULT_PENDING)
    assert pending.result_pending
    assert _load_result(pending) is None
    stored = _receipt("succeeded", encode_result("t", {"charged": 7}))
    assert not stored.result_pending
    assert _load_result(stored) == {"charged": 7}
    assert not _receipt("succeeded", None).result_pending
    assert not _receipt("in_progress", RESULT_PENDING).result_pending
