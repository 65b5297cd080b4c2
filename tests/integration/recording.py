"""For apps run by real ``celery worker`` processes in tests: every outcome is written
to Redis (the test process cannot hear signals sent in the worker's processes)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from celery_reliable.headers import Counters
from celery_reliable.signals import OutcomeEvent, task_outcome


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


def in_execution_order(items: list[Any], place: Any) -> list[Any]:
    """``items`` sorted by ``place(item)``, stable; an item of unknown place (None)
    keeps the place of the one that arrived before it."""
    keyed = []
    last = 0
    for item in items:
        known = place(item)
        last = last if known is None else known
        keyed.append((last, item))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def outcomes_key(task_id: str) -> str:
    return f"test:outcomes:{task_id}"


def record_outcomes_to(url: str) -> None:
    client = redis.Redis.from_url(url)

    def record(sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        assert event is not None
        client.rpush(
            outcomes_key(str(event.task_id)),
            json.dumps(
                {
                    "outcome": event.outcome.value,
                    "attempt": event.attempt,
                    "reason": event.reason,
                    "exc_type": type(event.exc).__name__ if event.exc else None,
                    "pid": os.getpid(),
                    "place": execution_place(event),
                }
            ),
        )

    task_outcome.connect(record, weak=False)


def recorded(url: str, task_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The outcomes recorded for ``task_id``, once there are ``count`` (or at timeout),
    in the order of the job's executions."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        items = [json.loads(x) for x in client.lrange(outcomes_key(task_id), 0, -1)]
        if len(items) >= count or time.monotonic() > deadline:
            return in_execution_order(items, lambda item: item.get("place"))
        time.sleep(0.05)
