"""The app a real prefork ``celery worker`` runs in tests (time limits, crashes).

Outcomes are sent from the pool's child processes (and, for the hard time limit, from
the main process), so a receiver here writes each one to Redis where the test reads.
"""

from __future__ import annotations

import time

from celery.exceptions import SoftTimeLimitExceeded

from celery_reliable import ReliableTask, retry_on
from celery_reliable.backoff import fixed
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

app = helper_app(
    "prefork_app",
    defaults={"reliable_database_url": "sqlite:///:memory:"},
    broker_transport_options={"visibility_timeout": 5},
    worker_prefetch_multiplier=1,
)

record_outcomes_to(app.conf.broker_url)


@app.task(base=ReliableTask, name="p.slow", timeout=1)
@retry_on(SoftTimeLimitExceeded, wait=fixed(0.1), attempts=2)
def slow(seconds: float) -> str:
    time.sleep(seconds)  # the body's duration, which the test sets against the limit
    return "finished"


@app.task(base=ReliableTask, name="p.stubborn", timeout=1)
def stubborn() -> None:
    # Swallows the soft limit and keeps going: only the hard limit stops it.
    try:
        time.sleep(30)  # far past the soft limit
    except SoftTimeLimitExceeded:
        time.sleep(30)  # and past the hard one
