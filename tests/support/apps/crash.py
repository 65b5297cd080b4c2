"""The app of the crash tests: a real prefork worker whose child is SIGKILLed mid-task.

``acks_late`` and ``task_reject_on_worker_lost``: a child that dies leaves its message
unacknowledged, and the worker puts it back on the queue for another child.
"""

from __future__ import annotations

import redis

from celery_reliable import ReliableTask
from tests.support.apps.config import helper_app
from tests.support.apps.effects import effects, metadata
from tests.support.apps.kill_points import started, wait_for_the_kill
from tests.support.outcomes import record_outcomes_to

app = helper_app(
    "crash_app",
    broker_transport_options={"visibility_timeout": 5},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # How long the worker waits for a dead child's result before WorkerLostError
    # (10 s by default, past this task's 4 s hard limit).
    worker_lost_wait=1.0,
)

record_outcomes_to(app.conf.broker_url)
_redis = redis.Redis.from_url(app.conf.broker_url)


# time_limit=8: the claim's lease is 8 + 5 = 13 s, so a takeover comes 13 s after the
# dead child's claim. The limit must outlast the time the worker takes to notice a
# dead child (at once on SIGCHLD, else at its pool's next check, at most 5 s later;
# then worker_lost_wait), or the hard limit fires first and the job ends FAILED
# instead of being redelivered.
@app.task(
    base=ReliableTask,
    bind=True,
    name="crash.charge",
    time_limit=8,
    idempotency_key="charge:{order_id}",
)
def charge(self: ReliableTask, order_id: str, kill_point: str) -> str:
    first = started(_redis, order_id)
    wait_for_the_kill(_redis, order_id, first and kill_point == "before-effect")
    with self.atomic() as session:
        session.execute(
            effects.insert().values(order_id=order_id, amount=1, task_id=self.request.id)
        )
    # committed, not acked:
    wait_for_the_kill(_redis, order_id, first and kill_point == "after-effect")
    return "charged"


def create_tables() -> None:
    from celery_reliable.store import migrate, store_for

    store = store_for(app)
    assert store is not None
    migrate.upgrade(store.engine)
    metadata.create_all(store.engine)
