"""The app a real prefork ``celery worker`` runs in tests (time limits, crashes).

Outcomes are sent from the pool's child processes (and, for the hard time limit, from
the main process), so a receiver here writes each one to Redis where the test reads.
"""

from __future__ import annotations

import os
import time

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from celery_reliable import ReliableTask, retry_on
from celery_reliable.backoff import fixed
from tests.integration.recording import record_outcomes_to

BROKER = os.environ["RELIABLE_TEST_BROKER"]

app = Celery("prefork_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"visibility_timeout": 5},
    worker_prefetch_multiplier=1,
    reliable_database_url=os.environ.get("RELIABLE_TEST_STORE", "sqlite:///:memory:"),
)

record_outcomes_to(BROKER)


@app.task(base=ReliableTask, name="p.slow", timeout=1)
@retry_on(SoftTimeLimitExceeded, wait=fixed(0.1), attempts=2)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@app.task(base=ReliableTask, name="p.stubborn", timeout=1)
def stubborn() -> None:
    # Swallows the soft limit and keeps going: only the hard limit stops it.
    try:
        time.sleep(30)
    except SoftTimeLimitExceeded:
        time.sleep(30)
