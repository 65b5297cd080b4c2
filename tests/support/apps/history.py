"""The app a real prefork ``celery worker`` runs in the outcome-history tests: the
history is written only when each pool process exits (the interval is an hour)."""

from __future__ import annotations

from celery_reliable import Discard, ReliableTask
from tests.support.apps.config import helper_app

app = helper_app("history_app", worker_prefetch_multiplier=1, reliable_history_interval=3600)


@app.task(base=ReliableTask, name="history.work")
def work(n: int) -> int:
    if n % 4 == 0:
        raise Discard("multiples of four are not wanted")
    return n
