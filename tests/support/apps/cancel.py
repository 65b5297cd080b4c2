"""The app real ``celery worker`` processes run for the cancel tests (prefork).

Outcomes are written to Redis by the processes that send them (the worker's main
process sends the ``CANCELLED`` of a job that never started); what each body did is
written there too, so a test can tell what really ran.
"""

from __future__ import annotations

import time

import redis

from celery_reliable import ReliableTask, retry_on
from celery_reliable.backoff import fixed
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

#: Seconds between the first attempt of ``cx.flaky`` and its retry.
RETRY_WAIT = 6.0

app = helper_app(
    "cancel_app",
    defaults={"reliable_database_url": "sqlite:///:memory:"},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    reliable_history_interval=0.5,
)
#: The same tasks' app without a store: ``reliable cancel`` has nothing to write to.
no_store_app = helper_app("cancel_no_store", set_as_current=False, reliable_database_url=None)

record_outcomes_to(app.conf.broker_url)
effects = redis.Redis.from_url(app.conf.broker_url)


class Flaky(Exception):
    """The first attempt of ``cx.flaky`` fails with it; a retry follows."""


@app.task(base=ReliableTask, name="cx.beating", bind=True, timeout=120, heartbeat_timeout=5)
def beating(self: ReliableTask) -> str:
    """Beats every 0.1 s until the test releases it (``release:{id}``), at most 60 s;
    says when it started and when its body was left, however it was left."""
    task_id = self.request.id
    effects.set(f"started:{task_id}", 1)
    try:
        deadline = time.monotonic() + 60
        while not effects.exists(f"release:{task_id}") and time.monotonic() < deadline:
            self.heartbeat(progress=None, at=time.time())
            time.sleep(0.1)  # the work between two beats
        effects.set(f"finished:{task_id}", 1)
        return "done"
    finally:
        effects.set(f"left:{task_id}", 1)


@app.task(base=ReliableTask, name="cx.mark", bind=True, timeout=30, waive={"idempotency": "test"})
def mark(self: ReliableTask) -> str:
    """Says that it ran."""
    effects.set(f"ran:{self.request.id}", 1)
    return "ran"


@app.task(base=ReliableTask, name="cx.flaky", bind=True, timeout=30, waive={"idempotency": "test"})
@retry_on(Flaky, wait=fixed(RETRY_WAIT), attempts=3)
def flaky(self: ReliableTask) -> str:
    """Fails its first attempt (a retry in RETRY_WAIT s); counts its attempts."""
    if effects.incr(f"attempts:{self.request.id}") == 1:
        raise Flaky("first attempt")
    return "done"
