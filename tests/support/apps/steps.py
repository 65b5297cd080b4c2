"""The app real ``celery worker`` processes run for the steps tests: a keyed import of
20 items in two steps, each item written through ``self.atomic()`` to a table in the
store's database with its ``step.advance()``.

What runs is counted in Redis, outside the product: every run of the ``prepare`` step's
block, and every execution of the job.
"""

from __future__ import annotations

import os
import time

import redis
import sqlalchemy as sa

from celery_reliable import HeartbeatTimeout, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

VISIBILITY_TIMEOUT = 5.0
ITEMS = 20

app = helper_app(
    "steps_app",
    defaults={"reliable_database_url": "sqlite:///:memory:"},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    # A whole worker that dies: its message is rescued within this and a rescue interval.
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
)

record_outcomes_to(app.conf.broker_url)
counts = redis.Redis.from_url(app.conf.broker_url)

metadata = sa.MetaData()
#: No unique constraint, on purpose: that each item is written once is the steps' work,
#: and the tests count the rows to prove it.
items = sa.Table(
    "step_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch", sa.String(64), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("task_id", sa.String(64), nullable=False),
)


class ItemFailed(Exception):
    """Raised once after an item, for the retry test."""


@app.task(
    base=ReliableTask,
    name="steps.import_items",
    bind=True,
    # Its lease: 5 + grace 5 + 5 s from the last renewal (each item's transaction).
    # The SIGKILL test kills it while it is silent in a transaction: well within 5 s.
    heartbeat_timeout=5,
    idempotency_key="import:{batch}",
)
@retry_on(ItemFailed, HeartbeatTimeout, wait=fixed(0.2), attempts=3)
def import_items(self: ReliableTask, batch: str, stop_after: int = 0, how: str = "") -> int:
    """``prepare``, then the 20 items from the cursor on. On its first execution, after
    item ``stop_after``: ``how="kill"`` waits for the Redis key ``go:{batch}``, then
    writes the next item and waits, inside its transaction, to be SIGKILLed;
    ``how="raise"`` raises ``ItemFailed`` (retried)."""
    counts.rpush(f"runs:{batch}", f"{os.getpid()}@{self.request.hostname}")
    first = self.request.retries == 0 and counts.set(f"first:{batch}", 1, nx=True)
    with self.step("prepare"):
        counts.incr(f"prepared:{batch}")
    with self.step("items") as step:
        for n in range((step.cursor or 0) + 1, ITEMS + 1):
            with self.atomic() as session:
                session.execute(items.insert().values(batch=batch, n=n, task_id=self.request.id))
                step.advance(n)
                if first and how == "kill" and n == stop_after + 1:
                    # Written, advanced, not committed: the SIGKILL rolls both back.
                    counts.set(f"in-transaction:{batch}", n)
                    time.sleep(30)  # stands here until the test SIGKILLs the worker
            self.heartbeat(progress=n / ITEMS, item=n)
            if first and how == "raise" and n == stop_after:
                raise ItemFailed(f"after item {n}")
            if first and how == "kill" and n == stop_after:
                # Beating between two items until the test is ready to kill.
                counts.set(f"waiting:{batch}", n)
                while not counts.exists(f"go:{batch}"):
                    self.heartbeat()
                    time.sleep(0.05)
    return int(step.cursor)


def create_tables() -> None:
    from celery_reliable.store import migrate, store_for

    store = store_for(app)
    assert store is not None
    migrate.upgrade(store.engine)
    metadata.create_all(store.engine)
