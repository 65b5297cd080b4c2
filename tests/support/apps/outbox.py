"""The app real ``celery worker`` and ``celery reliable relay`` processes run for the
outbox tests (``tests/integration/test_outbox_processes.py``).

Every body counts its runs in Redis, so a test can tell what really ran and how many
times; ``ob.block`` runs until the test releases it, so that a second copy of its
message arrives while it runs. ``RELIABLE_TEST_OUTBOX_RELAY=0`` starts workers without
their relay thread, so that a test decides which relay publishes what.
"""

from __future__ import annotations

import os
import time

import redis

from celery_reliable import ReliableTask
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

app = helper_app(
    "outbox_app",
    defaults={"reliable_database_url": "sqlite:///:memory:"},
    task_acks_late=True,
    reliable_outbox_relay=os.environ.get("RELIABLE_TEST_OUTBOX_RELAY", "1") == "1",
)

effects = redis.Redis.from_url(app.conf.broker_url)
record_outcomes_to(app.conf.broker_url)


@app.task(base=ReliableTask, name="ob.mark", bind=True, timeout=30)
def mark(self: ReliableTask, key: str) -> str:
    """Counts its runs of ``key``."""
    effects.incr(f"runs:{key}")
    return key


@app.task(base=ReliableTask, name="ob.block", bind=True, timeout=60)
def block(self: ReliableTask, key: str) -> str:
    """Runs until the test sets ``release:{key}`` (50 s at most)."""
    effects.incr(f"runs:{key}")
    effects.set(f"started:{key}", 1)
    deadline = time.monotonic() + 50
    while not effects.exists(f"release:{key}") and time.monotonic() < deadline:
        time.sleep(0.02)
    return key
