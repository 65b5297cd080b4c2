"""The app real ``celery worker`` processes run for the pause tests (prefork).

Every body counts its runs in Redis, and notes the attempt it ran as, so a test can
tell what really ran, how many times, and that a held message spent no attempt.
``pz.block`` keeps a pool process busy until the test releases it, so that a message
the worker has already received waits for a free process (prefetched) when the
pause comes.
"""

from __future__ import annotations

import time

import redis

from celery_reliable import ReliableTask
from tests.support.apps.config import helper_app

#: The queue the tests pause, and one that stays open (the later events come there).
PAUSED_QUEUE = "pz.paused"
OPEN_QUEUE = "pz.open"
QUEUES = f"{PAUSED_QUEUE},{OPEN_QUEUE}"

app = helper_app(
    "pause_app",
    defaults={"reliable_database_url": "sqlite:///:memory:"},
    # Two processes and two more messages received ahead: one message waits for a
    # free process while both run pz.block.
    worker_prefetch_multiplier=2,
    task_acks_late=True,
    task_default_queue=OPEN_QUEUE,
    task_routes={"pz.routed": {"queue": PAUSED_QUEUE}},
)
#: The same tasks' app without a store: ``reliable pause`` has nothing to write to.
no_store_app = helper_app("pause_no_store", set_as_current=False, reliable_database_url=None)

effects = redis.Redis.from_url(app.conf.broker_url)


def _ran(task: ReliableTask, key: str) -> None:
    effects.incr(f"runs:{key}")
    effects.rpush(f"attempts:{key}", task.request.retries or 0)
    effects.rpush("order", key)


@app.task(base=ReliableTask, name="pz.mark", bind=True, timeout=30, waive={"idempotency": "test"})
def mark(self: ReliableTask, key: str) -> str:
    """Counts its runs of ``key``."""
    _ran(self, key)
    return key


@app.task(
    base=ReliableTask,
    name="pz.held",
    bind=True,
    timeout=30,
    waive={"idempotency": "test"},
    acks_late=False,
)
def held(self: ReliableTask, key: str) -> str:
    """A task the tests pause, its message acknowledged when it starts (Celery's
    default): counts its runs of ``key``."""
    _ran(self, key)
    return key


@app.task(
    base=ReliableTask, name="pz.held_late", bind=True, timeout=30, waive={"idempotency": "test"}
)
def held_late(self: ReliableTask, key: str) -> str:
    """A task the tests pause, its message acknowledged when it ends (``acks_late``)."""
    _ran(self, key)
    return key


@app.task(base=ReliableTask, name="pz.routed", bind=True, timeout=30, waive={"idempotency": "test"})
def routed(self: ReliableTask, key: str) -> str:
    """Routed to the paused queue by ``task_routes``."""
    _ran(self, key)
    return key


@app.task(base=ReliableTask, name="pz.block", bind=True, timeout=90, waive={"idempotency": "test"})
def block(self: ReliableTask, key: str) -> str:
    """Runs until the test sets ``release:{key}`` (60 s at most)."""
    effects.set(f"started:{key}", 1)
    deadline = time.monotonic() + 60
    while not effects.exists(f"release:{key}") and time.monotonic() < deadline:
        time.sleep(0.02)
    _ran(self, key)
    return key


@app.task(name="pz.plain")
def plain(key: str) -> str:
    """A plain Celery task: a pause does not hold it (``pause --task`` refuses it)."""
    return key
