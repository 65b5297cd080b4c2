"""Unique enqueue: ``apply_async`` of a job whose unique key is held publishes nothing
and returns the holder's ``AsyncResult`` (Oban's ``unique``, Sidekiq Enterprise's
unique jobs).

The lock lives in the store's ``reliable_unique_locks`` table and is released when
its period ends, or (``"release": "terminal"``) as soon as the job reaches a terminal
outcome. If the store cannot be reached, the job is published anyway and a warning is
logged: a duplicate is better than a lost job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery_reliable.errors import StoreUnavailable, UniqueKeyError
from celery_reliable.store import store_for

if TYPE_CHECKING:
    from celery_reliable.task import ReliableTask

logger = logging.getLogger("celery_reliable.unique")


def holder_of(task: ReliableTask, task_id: str, args: Any, kwargs: Any) -> str | None:
    """Take the task's unique lock for ``task_id``; the holder's id if someone else has it.

    ``None`` means: go ahead and publish.
    """
    spec = task._reliable_unique
    assert spec is not None
    try:
        key = spec.key(tuple(args or ()), dict(kwargs or {}))
    except UniqueKeyError as exc:
        # Celery will refuse these arguments when the task runs; the lock cannot help.
        logger.warning(
            "task %s: no unique key for these arguments (%s); publishing", task.name, exc
        )
        return None
    store = store_for(task.app)
    if store is None:
        logger.warning("task %s: unique= needs reliable_database_url; publishing", task.name)
        return None
    try:
        holder = store.unique.acquire(task.name, key, task_id, spec.period)
    except StoreUnavailable as exc:
        logger.warning(
            "task %s: unique lock unavailable (%s); publishing without it", task.name, exc
        )
        return None
    return None if holder == task_id else holder


def release(task: ReliableTask, task_id: str, args: Any, kwargs: Any) -> None:
    """Free the key early (``"release": "terminal"``), if this task id still holds it."""
    spec = task._reliable_unique
    store = store_for(task.app)
    if spec is None or store is None:
        return
    try:
        key = spec.key(tuple(args or ()), dict(kwargs or {}))
        store.unique.release(task.name, key, task_id)
    except (StoreUnavailable, UniqueKeyError) as exc:
        logger.warning(
            "task %s[%s]: unique lock not released (%s); it expires with its period",
            task.name,
            task_id,
            exc,
        )
