"""pytest plugin: every Celery app built during the run defaults to ReliableTask.

Loaded by ``celery_suite.py`` (``-p tests.compat.reliable_default``) into Celery's own
test suite. At the end it writes how many ReliableTask classes were built and how many
executions went through ReliableTask, so the comparison can refuse a run in which the
swap silently did not happen.
"""

from __future__ import annotations

import json
import os
from typing import Any

import celery.app.base

from celery_reliable import ReliableTask
from celery_reliable.signals import execution_started

celery.app.base.Celery.task_cls = "celery_reliable:ReliableTask"

_executions = 0
#: Celery's integration suite runs a prefork worker: its children count in Redis.
_COUNTER_URL = os.environ.get("RELIABLE_SUITE_COUNTER")
_COUNTER_KEY = "reliable-suite:executions"
_counter: Any = None


def _count(**_: Any) -> None:
    global _executions, _counter
    _executions += 1
    if _COUNTER_URL and os.getpid() != _PARENT:
        import redis

        if _counter is None:
            _counter = redis.Redis.from_url(_COUNTER_URL)
        _counter.incr(_COUNTER_KEY)


_PARENT = os.getpid()


execution_started.connect(_count, weak=False)


def _task_classes() -> int:
    seen: set[type] = set()
    todo: list[type] = [ReliableTask]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
    return len(seen)


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    path = os.environ.get("RELIABLE_SUITE_REPORT")
    if path:
        executions = _executions
        if _COUNTER_URL:
            import redis

            executions += int(redis.Redis.from_url(_COUNTER_URL).get(_COUNTER_KEY) or 0)
        with open(path, "w", encoding="utf-8") as out:
            json.dump({"task_classes": _task_classes(), "executions": executions}, out)
