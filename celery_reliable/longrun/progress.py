"""Reading a running job's progress from Python: what ``reliable progress`` shows."""

from __future__ import annotations

from typing import Any

from celery_reliable.store import store_for
from celery_reliable.store.progress import Progress

__all__ = ["Progress", "progress_of", "running"]


def progress_of(app: Any, task_id: str) -> Progress | None:
    """The last heartbeat of job ``task_id`` while it runs; None when it is not running
    (or ended, or has not beaten yet, or the app has no store). Raises
    ``StoreUnavailable`` when the store cannot be reached."""
    store = store_for(app)
    return None if store is None else store.progress.get(task_id)


def running(app: Any, limit: int = 100) -> list[Progress]:
    """Every running job with a heartbeat, the most recent beat first."""
    store = store_for(app)
    return [] if store is None else store.progress.running(limit)
