"""The app of the redelivery tests: real prefork workers on Redis with a short
``visibility_timeout``, so that rescue and keepalive show within seconds."""

from __future__ import annotations

import os
import time

import redis

from celery_reliable import ReliableTask
from tests.support.apps.config import helper_app

VISIBILITY_TIMEOUT = 4.0
RESCUE_INTERVAL = 0.5

app = helper_app(
    "redelivery_app",
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    reliable_database_url=None,
    reliable_rescue_interval=RESCUE_INTERVAL,
    reliable_keepalive=os.environ.get("RELIABLE_TEST_KEEPALIVE", "1") == "1",
)
_redis = redis.Redis.from_url(app.conf.broker_url)


def runs_key(job: str) -> str:
    return f"redelivery:runs:{job}"


def release_key(job: str) -> str:
    return f"redelivery:release:{job}"


def _released(job: str) -> bool:
    """Whether the test let the body end early (not while Redis is down: a test
    restarts it under a running body, which then works out its ``seconds``)."""
    try:
        return bool(_redis.exists(release_key(job)))
    except redis.RedisError:
        return False


@app.task(
    base=ReliableTask,
    bind=True,
    name="redelivery.hold",
    timeout=60,
    waive={"idempotency": "the test counts its runs"},
)
def hold(self: ReliableTask, job: str, seconds: float) -> str:
    """Record each run (time, worker), then work ``seconds`` (the first run only), or
    until the test has seen what it waited for and sets ``release_key(job)``."""
    _redis.rpush(runs_key(job), f"{time.time()} {self.request.hostname}")
    if _redis.set(f"redelivery:first:{job}", 1, nx=True):
        # The body's duration, set against the visibility timeout.
        until = time.monotonic() + seconds
        while time.monotonic() < until and not _released(job):
            time.sleep(0.05)
    return "done"
