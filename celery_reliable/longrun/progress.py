"""Reading a running job's progress from Python: what ``reliable progress`` shows."""

from __future__ import annotations

from typing import Any

from celery_reliable.options import heartbeat_grace
from celery_reliable.store import store_for
from celery_reliable.store.progress import Progress

__all__ = ["Progress", "progress_of", "running", "stale_after"]


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


def stale_after(app: Any, task_name: str) -> float | None:
    """Seconds without a beat after which a job's worker is presumed gone: its
    heartbeat_timeout and grace (the monitor would have ended it by then), plus the
    second between two writes. None for a task this app does not know."""
    task = app.tasks.get(task_name)
    timeout = getattr(task, "_reliable_heartbeat_timeout", None)
    return None if timeout is None else timeout + heartbeat_grace(timeout) + 1.0
