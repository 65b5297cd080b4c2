"""The suite's outcome recorders, both on ``task_outcome``'s :class:`OutcomeEvent`:

* :class:`OutcomeRecorder`, the ``outcomes`` fixture: the list
  ``celery_reliable.testing.capture_outcomes()`` fills in this process (an embedded
  worker's outcomes), with a way to wait for a job's;
* for apps run by real ``celery worker`` processes (the test process cannot hear
  signals sent in the worker's processes): :func:`record_outcomes_to` writes each
  outcome to Redis as :func:`record_of` puts it, and :func:`recorded` reads them back.

Both give a job's outcomes in the order of its executions (:func:`execution_place`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import redis

from celery_reliable.headers import Counters
from celery_reliable.signals import OutcomeEvent, task_outcome
from tests.support.waiting import wait_until


def execution_place(event: OutcomeEvent) -> int | None:
    """Which execution of its job an outcome is from: 0 for the first, and one more for
    each re-publish (a retry raises Celery's ``retries``, a snooze our snooze count).

    Outcomes are compared in this order, not in the order they arrive: an execution
    re-publishes its retry or snooze and only then sends its outcome, so on a busy
    machine the next execution (another pool thread or process) may report first.
    None when the request is not known (an outcome the worker's main process reports).
    """
    request = event.request
    if request is None:
        return None
    headers = getattr(request, "headers", None)
    # quiet: the execution itself warns about a malformed header, once.
    snoozes = Counters.from_headers(headers, event.task_id, quiet=True).snoozes
    return int(getattr(request, "retries", 0) or 0) + snoozes


def in_execution_order(items: list[Any], place: Callable[[Any], int | None]) -> list[Any]:
    """``items`` sorted by ``place(item)``, stable; an item of unknown place (None)
    keeps the place of the one that arrived before it."""
    keyed = []
    last = 0
    for item in items:
        known = place(item)
        last = last if known is None else known
        keyed.append((last, item))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


class OutcomeRecorder:
    """The outcomes sent in this process while a test runs: ``events`` is the list
    ``capture_outcomes()`` fills, in the order they were sent."""

    def __init__(self, events: list[OutcomeEvent]) -> None:
        self.events = events

    def for_id(self, task_id: str) -> list[OutcomeEvent]:
        """The job's outcomes in the order of its executions (not of their arrival)."""
        found = [e for e in list(self.events) if e.task_id == task_id]
        return in_execution_order(found, execution_place)

    def wait_for(
        self,
        task_id: str,
        count: int = 1,
        timeout: float = 20.0,
        until: Callable[[list[OutcomeEvent]], bool] | None = None,
    ) -> list[OutcomeEvent]:
        """Wait until ``task_id`` has ``count`` outcomes (or ``until`` holds); return them."""

        def done() -> tuple[list[OutcomeEvent]] | None:
            found = self.for_id(task_id)
            return (found,) if (until(found) if until else len(found) >= count) else None

        (found,) = wait_until(
            done,
            f"task {task_id}'s outcomes" + ("" if until else f" ({count})"),
            timeout=timeout,
            seen=lambda: [(e.outcome.value, e.reason) for e in self.for_id(task_id)],
        )
        return found


# -- across processes -------------------------------------------------------------------


def record_of(event: OutcomeEvent) -> dict[str, Any]:
    """What a worker process keeps of an outcome, as JSON."""
    return {
        "outcome": event.outcome.value,
        "attempt": event.attempt,
        "reason": event.reason,
        "exc_type": type(event.exc).__name__ if event.exc else None,
        "rule": event.rule,
        "counted_as": event.counted_as,
        "pid": os.getpid(),
        "place": execution_place(event),
    }


def outcomes_key(task_id: str) -> str:
    return f"test:outcomes:{task_id}"


def record_outcomes_to(url: str) -> None:
    """In a worker process (its app's module): write every outcome this process sends
    to Redis at ``url``, where :func:`recorded` reads it."""
    client = redis.Redis.from_url(url)

    def record(sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        assert event is not None
        client.rpush(outcomes_key(str(event.task_id)), json.dumps(record_of(event)))

    task_outcome.connect(record, weak=False)


def recorded(url: str, task_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The outcomes worker processes recorded for ``task_id``, once there are
    ``count``, in the order of the job's executions."""
    client = redis.Redis.from_url(url)

    def read() -> list[dict[str, Any]]:
        return [json.loads(x) for x in client.lrange(outcomes_key(task_id), 0, -1)]

    items = wait_until(
        lambda: (found := read()) and len(found) >= count and found,
        f"{count} recorded outcome(s) of task {task_id}",
        timeout=timeout,
        seen=read,
    )
    return in_execution_order(items, lambda item: item.get("place"))
