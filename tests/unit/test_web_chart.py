"""The overview's chart and error rate (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta

from celery_reliable.web.chart import all_tasks, chart, error_rate, per_minute

NOW = datetime(2026, 11, 24, 9, 30)


def test_bars_stack_by_how_executions_ended_scaled_to_the_busiest_minute() -> None:
    rows = [
        (NOW, "a", "q", "succeeded", 8),
        (NOW, "a", "q2", "succeeded", 2),
        (NOW, "a", "q", "retried", 5),
        (NOW, "a", "q", "failed", 1),
        (NOW - timedelta(minutes=1), "a", "q", "duplicate", 4),
        (NOW - timedelta(minutes=90), "a", "q", "succeeded", 99),  # outside the span
        (NOW, "b", "q", "cancelled", 3),
    ]
    by_task = per_minute(rows)
    assert by_task["a"][NOW] == {"ok": 10, "again": 5, "error": 1}
    drawn = chart(by_task["a"], NOW, span=60, width=240, height=32)
    assert len(drawn.bars) == 60 and drawn.peak == 99
    last = drawn.bars[-1]
    assert last.minute == NOW and last.total == 16
    assert [s.group for s in last.segments] == ["ok", "again", "error"]
    # The bar for 90 minutes ago is not drawn; the busiest minute sets the scale.
    assert drawn.bars[0].minute == NOW - timedelta(minutes=59)
    small = chart({NOW: {"ok": 1000, "error": 1}}, NOW, height=30)
    error = small.bars[-1].segments[-1]
    assert error.group == "error" and error.height == 1.0  # one error stays visible
    assert all_tasks(by_task)[NOW] == {"ok": 10, "again": 5, "error": 1, "cancelled": 3}


def test_error_rate_is_over_the_executions_that_ended_their_job() -> None:
    assert error_rate({}) is None
    assert error_rate({"retried": 4, "snoozed": 1}) is None
    assert error_rate({"succeeded": 3, "retried": 10, "failed": 1}) == 0.25
    assert error_rate({"discarded": 1, "exhausted": 1, "cancelled": 2}) == 0.5
