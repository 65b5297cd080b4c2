"""Outcome history: executions per task, minute, queue and outcome, with durations.

Workers add their counts in batches (one statement adds every row of a batch, each
row's counts summed into what other workers wrote for the same minute); ``report``
and the web view read summaries; the worker's prune cycle deletes old minutes.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine

from celery_reliable.errors import StoreUnavailable
from celery_reliable.store.engine import rowcount, run_statement, single_statement_engine
from celery_reliable.store.schema import DURATION_BOUNDS, DURATION_BUCKETS, outcome_history
from celery_reliable.store.timeutil import utcnow

#: Rows per statement: each row has 18 bound parameters, well within SQLite's 32766.
BATCH_ROWS = 500

#: Tries of a write that PostgreSQL aborted to break a deadlock or a serialization
#: conflict with another writer (it is safe to run again: nothing was written).
DEADLOCK_RETRIES = 3
_RACE_SQLSTATES = frozenset({"40P01", "40001"})

_KEY = ("task_name", "minute", "queue", "outcome")
_SUMMED = ("count", "duration_count", "duration_sum", *DURATION_BUCKETS)


def bucket_of(seconds: float) -> int:
    """The index of the histogram bucket (``DURATION_BUCKETS``) a duration falls in."""
    return bisect.bisect_left(DURATION_BOUNDS, seconds)


@dataclass
class MinuteCounts:
    """What one process saw of one (task, minute, queue, outcome)."""

    count: int = 0
    duration_count: int = 0
    duration_sum: float = 0.0
    duration_max: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(DURATION_BUCKETS))

    def add(self, duration: float | None) -> None:
        self.count += 1
        if duration is None or not math.isfinite(duration) or duration < 0:
            return
        self.duration_count += 1
        self.duration_sum += duration
        self.duration_max = max(self.duration_max, duration)
        self.buckets[bucket_of(duration)] += 1

    def merge(self, other: MinuteCounts) -> None:
        self.count += other.count
        self.duration_count += other.duration_count
        self.duration_sum += other.duration_sum
        self.duration_max = max(self.duration_max, other.duration_max)
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]


#: (task name, minute (naive UTC), queue, outcome value)
HistoryKey = tuple[str, datetime, str, str]


@dataclass(frozen=True)
class HistorySummary:
    """Totals of a task (or every task) over a time range."""

    since: datetime
    counts: Mapping[str, int]
    duration_count: int
    duration_sum: float
    duration_max: float
    buckets: Sequence[int]

    @property
    def executions(self) -> int:
        return sum(self.counts.values())

    def rate(self, outcome: str) -> float:
        """The share of executions that ended with ``outcome`` (0 when none ran)."""
        total = self.executions
        return self.counts.get(outcome, 0) / total if total else 0.0

    @property
    def mean_duration(self) -> float | None:
        return self.duration_sum / self.duration_count if self.duration_count else None

    def duration_quantile(self, q: float) -> float | None:
        """An estimate from the histogram: linear inside the bucket the quantile falls
        in (the last, open bucket ends at the longest duration seen)."""
        if not self.duration_count:
            return None
        rank = q * self.duration_count
        seen = 0
        for index, count in enumerate(self.buckets):
            if count and seen + count >= rank:
                low = DURATION_BOUNDS[index - 1] if index else 0.0
                high = DURATION_BOUNDS[index] if index < len(DURATION_BOUNDS) else self.duration_max
                high = min(high, self.duration_max)
                low = min(low, high)
                return low + (high - low) * (rank - seen) / count
            seen += count
        return self.duration_max

    @property
    def median_duration(self) -> float | None:
        return self.duration_quantile(0.5)


class OutcomeHistory:
    def __init__(self, engine: Engine, insert: Any) -> None:
        self._engine = engine
        self._single = single_statement_engine(engine)
        self._insert = insert
        greatest = func.max if engine.dialect.name == "sqlite" else func.greatest
        self._greatest = greatest

    def add(self, rows: dict[HistoryKey, MinuteCounts]) -> int:
        """Add the counts to the store (summed into rows other workers wrote), one
        statement per ``BATCH_ROWS``. Each batch written is removed from ``rows``, so
        that after a failure ``rows`` holds only what is still to write."""
        # In key order: workers writing the same minutes at once (prefork children
        # exiting together) then lock the rows in one order, and cannot deadlock.
        items = sorted(rows.items(), key=lambda item: item[0])
        for start in range(0, len(items), BATCH_ROWS):
            batch = items[start : start + BATCH_ROWS]
            statement = self._upsert([_values(key, counts) for key, counts in batch])
            for attempt in range(1, DEADLOCK_RETRIES + 1):
                try:
                    run_statement(
                        self._single, "writing the outcome history", statement, None, rowcount
                    )
                    for key, _ in batch:
                        del rows[key]
                    break
                except StoreUnavailable as exc:
                    if attempt == DEADLOCK_RETRIES or not _lost_a_race(exc):
                        raise
                    time.sleep(0.05 * attempt)
        return len(items)

    def _upsert(self, values: list[dict[str, Any]]) -> Any:
        statement = self._insert(outcome_history).values(values)
        excluded = statement.excluded
        table = outcome_history.c
        update: dict[str, Any] = {name: table[name] + excluded[name] for name in _SUMMED}
        update["duration_max"] = self._greatest(table.duration_max, excluded.duration_max)
        return statement.on_conflict_do_update(index_elements=list(_KEY), set_=update)

    def summary(
        self, task_name: str | None = None, since: datetime | None = None, hours: float = 24
    ) -> HistorySummary:
        """Totals since ``since`` (default: the last ``hours``), for one task or all."""
        since = since or utcnow() - timedelta(hours=hours)
        table = outcome_history.c
        columns = [
            table.outcome,
            func.sum(table.count),
            func.sum(table.duration_count),
            func.sum(table.duration_sum),
            func.max(table.duration_max),
            *(func.sum(table[name]) for name in DURATION_BUCKETS),
        ]
        query = select(*columns).where(table.minute >= since).group_by(table.outcome)
        if task_name is not None:
            query = query.where(table.task_name == task_name)
        rows = run_statement(self._engine, "reading the outcome history", query, None, _all)
        counts: dict[str, int] = {}
        duration_count, duration_sum, duration_max = 0, 0.0, 0.0
        buckets = [0] * len(DURATION_BUCKETS)
        for outcome, count, d_count, d_sum, d_max, *bucket_sums in rows:
            counts[outcome] = int(count or 0)
            duration_count += int(d_count or 0)
            duration_sum += float(d_sum or 0.0)
            duration_max = max(duration_max, float(d_max or 0.0))
            buckets = [a + int(b or 0) for a, b in zip(buckets, bucket_sums, strict=True)]
        return HistorySummary(since, counts, duration_count, duration_sum, duration_max, buckets)

    def counts_by_task(self, since: datetime) -> dict[str, dict[str, int]]:
        """``task -> outcome -> executions`` since ``since`` (every queue summed)."""
        table = outcome_history.c
        # Grouped by outcome first: grouped by task first, SQLite (no statistics) walks
        # the whole primary key, task first, to check each row's minute (every day of
        # the retention) instead of reading the minutes asked for by their index.
        query = (
            select(table.task_name, table.outcome, func.sum(table.count))
            .where(table.minute >= since)
            .group_by(table.outcome, table.task_name)
        )
        rows = run_statement(self._engine, "reading the outcome history", query, None, _all)
        found: dict[str, dict[str, int]] = {}
        for task_name, outcome, count in rows:
            found.setdefault(task_name, {})[outcome] = int(count or 0)
        return found

    def minutes(
        self, task_name: str | None = None, since: datetime | None = None, hours: float = 1
    ) -> list[tuple[datetime, str, str, str, int]]:
        """``(minute, task, queue, outcome, count)`` rows since ``since``, oldest first."""
        since = since or utcnow() - timedelta(hours=hours)
        table = outcome_history.c
        query = (
            select(table.minute, table.task_name, table.queue, table.outcome, table.count)
            .where(table.minute >= since)
            .order_by(table.minute, table.task_name, table.queue, table.outcome)
        )
        if task_name is not None:
            query = query.where(table.task_name == task_name)
        rows = run_statement(self._engine, "reading the outcome history", query, None, _all)
        return [(m, t, q, o, int(c)) for m, t, q, o, c in rows]

    def prune(self, retention_seconds: float, now: datetime | None = None) -> int:
        """Delete the minutes older than the retention."""
        cutoff = (now or utcnow()) - timedelta(seconds=retention_seconds)
        statement = delete(outcome_history).where(outcome_history.c.minute < cutoff)
        return run_statement(self._engine, "pruning the outcome history", statement, None, rowcount)


def _lost_a_race(exc: BaseException) -> bool:
    """The database aborted the statement to break a deadlock or a serialization
    conflict (SQLSTATE 40P01, 40001)."""
    cause = getattr(exc.__cause__, "orig", None)
    code = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    return code in _RACE_SQLSTATES


def _all(result: Any) -> list[Any]:
    return list(result.all())


def _values(key: HistoryKey, counts: MinuteCounts) -> dict[str, Any]:
    task_name, minute, queue, outcome = key
    values: dict[str, Any] = {
        "task_name": task_name,
        "minute": minute,
        "queue": queue,
        "outcome": outcome,
        "count": counts.count,
        "duration_count": counts.duration_count,
        "duration_sum": counts.duration_sum,
        "duration_max": counts.duration_max,
    }
    values.update(zip(DURATION_BUCKETS, counts.buckets, strict=True))
    return values


def minute_of(timestamp: float) -> datetime:
    """The minute (naive UTC) a POSIX timestamp falls in."""
    return datetime.fromtimestamp(timestamp - timestamp % 60, timezone.utc).replace(tzinfo=None)


def aggregate(
    events: Iterable[tuple[float, str, str | None, str, float | None]],
    into: dict[HistoryKey, MinuteCounts],
) -> None:
    """Sum ``(time, task, queue, outcome, duration)`` events into per-minute counts."""
    minutes: dict[int, datetime] = {}
    for when, task_name, queue, outcome, duration in events:
        whole = int(when // 60)
        minute = minutes.get(whole)
        if minute is None:
            minute = minutes[whole] = minute_of(whole * 60.0)
        key = (task_name, minute, queue or "unknown", outcome)
        counts = into.get(key)
        if counts is None:
            counts = into[key] = MinuteCounts()
        counts.add(duration)
