"""The app a real prefork ``celery worker`` runs in the outcome-history tests: the
history is written only when each pool process exits (the interval is an hour)."""

from __future__ import annotations

import os

from celery import Celery

from celery_reliable import Discard, ReliableTask

BROKER = os.environ["RELIABLE_TEST_BROKER"]

app = Celery("history_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=1,
    reliable_database_url=os.environ["RELIABLE_TEST_STORE"],
    reliable_history_interval=3600,
)


@app.task(base=ReliableTask, name="history.work")
def work(n: int) -> int:
    if n % 4 == 0:
        raise Discard("multiples of four are not wanted")
    return n
