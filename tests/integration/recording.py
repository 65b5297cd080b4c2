"""For apps run by real ``celery worker`` processes in tests: every outcome is written
to Redis (the test process cannot hear signals sent in the worker's processes)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from celery_reliable.signals import task_outcome


def outcomes_key(task_id: str) -> str:
    return f"test:outcomes:{task_id}"


def record_outcomes_to(url: str) -> None:
    client = redis.Redis.from_url(url)

    def record(sender: Any = None, **fields: Any) -> None:
        client.rpush(
            outcomes_key(fields["task_id"]),
            json.dumps(
                {
                    "outcome": fields["outcome"].value,
                    "attempt": fields["attempt"],
                    "reason": fields["reason"],
                    "exc_type": type(fields["exc"]).__name__ if fields["exc"] else None,
                    "pid": os.getpid(),
                }
            ),
        )

    task_outcome.connect(record, weak=False)


def recorded(url: str, task_id: str, count: int, timeout: float = 30) -> list[dict[str, Any]]:
    """The outcomes recorded for ``task_id``, once there are ``count`` (or at timeout)."""
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + timeout
    while True:
        items = [json.loads(x) for x in client.lrange(outcomes_key(task_id), 0, -1)]
        if len(items) >= count or time.monotonic() > deadline:
            return items
        time.sleep(0.05)
