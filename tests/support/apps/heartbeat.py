"""The app real ``celery worker`` processes run for the heartbeat tests (prefork, solo).

Outcomes are written to Redis from the pool's processes (``recording.py``); effects
too, so a test can count what really ran.
"""

from __future__ import annotations

import itertools
import time

import redis

from celery_reliable import HeartbeatTimeout, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

VISIBILITY_TIMEOUT = 5.0

app = helper_app(
    "heartbeat_app",
    defaults={"reliable_database_url": "sqlite:///:memory:"},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    # A whole worker that dies: its message is rescued within this and a rescue interval.
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
)

record_outcomes_to(app.conf.broker_url)
effects = redis.Redis.from_url(app.conf.broker_url)


@app.task(base=ReliableTask, name="hb.silent_once", bind=True, timeout=120, heartbeat_timeout=2)
@retry_on(HeartbeatTimeout, wait=fixed(0.2), attempts=3)
def silent_once(self: ReliableTask) -> str:
    """Goes silent in a sleep on its first execution (only its time limit, 120 s, would
    end it without a heartbeat); beats and finishes on the next."""
    if self.request.retries == 0:
        self.heartbeat(progress=0.1)
        time.sleep(1000)  # silent: what the heartbeat must end
    self.heartbeat(progress=1.0)
    return "done"


@app.task(base=ReliableTask, name="hb.beating", bind=True, timeout=120, heartbeat_timeout=1)
def beating(self: ReliableTask, seconds: float) -> str:
    """Runs several times its heartbeat_timeout, beating often: never interrupted."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        self.heartbeat(progress=None, left=deadline - time.monotonic())
        time.sleep(0.2)  # the work between two beats
    return "done"


@app.task(base=ReliableTask, name="hb.stuck_in_c", bind=True, timeout=120, heartbeat_timeout=1)
def stuck_in_c(self: ReliableTask) -> None:
    """Stuck where no signal handler runs: ``sum`` over an iterator holds the GIL in C
    for minutes and never checks for signals (a backtracking regex does check).
    HeartbeatTimeout cannot be raised; the process is killed."""
    self.heartbeat()
    sum(itertools.repeat(1, 10**11))


@app.task(
    base=ReliableTask,
    name="hb.stuck_in_c_retried",
    bind=True,
    timeout=120,
    heartbeat_timeout=1,
    acks_late=True,
    reject_on_worker_lost=True,
)
@retry_on(HeartbeatTimeout, attempts=2, wait=0.1)
def stuck_in_c_retried(self: ReliableTask) -> None:
    """Stuck in C on every attempt: killed, retried by its rule (not requeued by
    ``reject_on_worker_lost``, which would run it again at once and for ever), killed
    again, exhausted."""
    effects.incr(f"stuck-runs:{self.request.id}")
    self.heartbeat()
    sum(itertools.repeat(1, 10**11))


@app.task(
    base=ReliableTask,
    name="hb.keyed",
    bind=True,
    heartbeat_timeout=1,
    idempotency_key="keyed:{order}",
)
def keyed(self: ReliableTask, order: str, seconds: float) -> str:
    """Runs longer than its lease (heartbeat_timeout + grace + margin = 8 s), beating:
    a second job with the same key must not take it over."""
    effects.set(f"running:{order}", str(self.request.id))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        self.heartbeat()
        time.sleep(0.2)  # the work between two beats
    effects.incr(f"effects:{order}")
    return f"done {order}"


@app.task(base=ReliableTask, name="hb.import_rows", bind=True, timeout=120, heartbeat_timeout=5)
def import_rows(self: ReliableTask, rows: int, until: str) -> int:
    """Beats with its progress on every row, and stops at the row where it finds the
    Redis key ``until`` set (the test sets it once it has read the progress)."""
    for n in range(1, rows + 1):
        self.heartbeat(progress=n / rows, row=n)
        if effects.exists(until):
            return n
        time.sleep(0.1)  # the work on one row
    return rows


@app.task(
    base=ReliableTask,
    name="hb.keyed_until_released",
    bind=True,
    heartbeat_timeout=1,
    idempotency_key="released:{order}",
)
def keyed_until_released(self: ReliableTask, order: str) -> str:
    """Beats until the test releases the order (Redis key ``release:{order}``), then
    writes its effect: the run on the worker the test kills never gets there."""
    effects.rpush(f"runs:{order}", str(self.request.hostname))
    while not effects.exists(f"release:{order}"):
        self.heartbeat()
        time.sleep(0.2)  # the work between two beats
    effects.incr(f"effects:{order}")
    return f"done {order}"
