"""The outcome history's arithmetic: minutes, buckets, sums, the median estimate."""

from __future__ import annotations

from datetime import datetime

import pytest

from celery_reliable.store.history import (
    HistoryKey,
    HistorySummary,
    MinuteCounts,
    aggregate,
    bucket_of,
    minute_of,
)
from celery_reliable.store.schema import DURATION_BOUNDS, DURATION_BUCKETS


def test_minute_of_truncates_to_the_utc_minute() -> None:
    # 2026-11-23 20:37:59.9 UTC
    assert minute_of(1795466279.9) == datetime(2026, 11, 23, 20, 37)


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, "under_10ms"),
        (0.01, "under_10ms"),
        (0.0100001, "under_50ms"),
        (0.7, "under_1s"),
        (300.0, "under_5m"),
        (301.0, "over_5m"),
    ],
)
def test_bucket_bounds_are_inclusive(seconds: float, bucket: str) -> None:
    assert DURATION_BUCKETS[bucket_of(seconds)] == bucket


def test_aggregate_sums_per_task_minute_queue_and_outcome() -> None:
    t0 = 1795466220.0  # 20:37:00
    events = [
        (t0 + 1, "a", "q", "succeeded", 0.2),
        (t0 + 59, "a", "q", "succeeded", 0.7),
        (t0 + 61, "a", "q", "succeeded", None),  # next minute, duration unknown
        (t0 + 2, "a", None, "failed", float("nan")),
        (t0 + 3, "b", "q", "succeeded", 2.0),
    ]
    into: dict[HistoryKey, MinuteCounts] = {}
    aggregate(events, into)
    first = into[("a", datetime(2026, 11, 23, 20, 37), "q", "succeeded")]
    assert (first.count, first.duration_count, first.duration_max) == (2, 2, 0.7)
    assert first.duration_sum == pytest.approx(0.9)
    assert first.buckets[DURATION_BUCKETS.index("under_500ms")] == 1
    assert first.buckets[DURATION_BUCKETS.index("under_1s")] == 1
    later = into[("a", datetime(2026, 11, 23, 20, 38), "q", "succeeded")]
    assert (later.count, later.duration_count) == (1, 0)
    unknown_queue = into[("a", datetime(2026, 11, 23, 20, 37), "unknown", "failed")]
    assert (unknown_queue.count, unknown_queue.duration_count) == (1, 0)
    assert len(into) == 4


def test_merge_adds_counts_and_keeps_the_longest() -> None:
    a, b = MinuteCounts(), MinuteCounts()
    a.add(0.02)
    b.add(3.0)
    b.add(None)
    a.merge(b)
    assert (a.count, a.duration_count, a.duration_max) == (3, 2, 3.0)
    assert sum(a.buckets) == 2


def _summary(durations: list[float]) -> HistorySummary:
    counts = MinuteCounts()
    for duration in durations:
        counts.add(duration)
    return HistorySummary(
        since=datetime(2026, 1, 1),
        counts={"succeeded": counts.count},
        duration_count=counts.duration_count,
        duration_sum=counts.duration_sum,
        duration_max=counts.duration_max,
        buckets=counts.buckets,
    )


def test_median_is_estimated_inside_its_bucket() -> None:
    summary = _summary([0.2] * 50 + [2.0] * 50)
    median = summary.median_duration
    assert median is not None
    # Half the durations are in (0.1, 0.5]: the median is that bucket's upper end.
    assert 0.1 < median <= 0.5
    assert summary.mean_duration == pytest.approx(1.1)
    assert summary.rate("succeeded") == 1.0 and summary.rate("failed") == 0.0


def test_median_never_exceeds_the_longest_duration() -> None:
    summary = _summary([0.12, 0.13, 0.14])
    median = summary.median_duration
    assert median is not None and DURATION_BOUNDS[2] < median <= 0.14
    assert _summary([400.0, 500.0]).median_duration == pytest.approx(450.0, rel=0.3)


def test_no_durations_no_median() -> None:
    assert _summary([]).median_duration is None
