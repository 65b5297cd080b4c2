"""The app real ``celery beat`` and ``celery worker`` processes run for the periodic
jobs' tests (``tests/integration/test_beat.py``).

Its schedule has one entry, named by ``RELIABLE_TEST_BEAT_ENTRY`` (each test its own,
on a module's shared store): ``bt.tick`` every second (``RELIABLE_TEST_BEAT_EVERY``).
The body counts its runs per due time in Redis (the hash ``runs:{entry}``, due time ->
runs), so a test can tell which slots ran and how many times each.
``RELIABLE_TEST_BEAT_CATCH_UP`` sets ``reliable_beat_catch_up``.
"""

from __future__ import annotations

import os

import redis

from celery_reliable import ReliableTask
from celery_reliable.headers import BEAT_HEADER
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

ENTRY = os.environ.get("RELIABLE_TEST_BEAT_ENTRY", "every-second")

app = helper_app(
    "beat_app",
    defaults={"reliable_database_url": "sqlite:///:memory:"},
    beat_scheduler="celery_reliable.beat:Scheduler",
    beat_schedule={
        ENTRY: {
            "task": "bt.tick",
            "schedule": float(os.environ.get("RELIABLE_TEST_BEAT_EVERY", "1")),
            "args": (ENTRY,),
        }
    },
    reliable_beat_catch_up=float(os.environ.get("RELIABLE_TEST_BEAT_CATCH_UP", "3600")),
    # The workers of these tests have no relay to run.
    reliable_outbox_relay=False,
)

effects = redis.Redis.from_url(app.conf.broker_url)
record_outcomes_to(app.conf.broker_url)


@app.task(base=ReliableTask, name="bt.tick", bind=True, timeout=30)
def tick(self: ReliableTask, entry: str) -> str:
    """Counts its runs of the slot it was published for."""
    due = str((self.request.headers or {})[BEAT_HEADER]["due"])
    effects.hincrby(f"runs:{entry}", due, 1)
    return due


@app.task(name="bt.sentinel")
def sentinel() -> str:
    """Published last, after every beat stopped: once it ran, so had every message the
    beats published before it (one queue, a solo worker, first in first out)."""
    return "sentinel"
