"""Exactly-once effects under real crashes: a prefork child SIGKILLed mid-task.

``acks_late`` + ``task_reject_on_worker_lost``: the message comes back. Killed before
its effect, the job's claim is taken over once its lease expires and the effect is
written once; killed after ``atomic()`` committed, the redelivery is a DUPLICATE.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from celery_reliable.results import wait_for_outcome
from celery_reliable.testing import reset
from tests.support.apps.effects import effects
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def worker(broker: str, module_store_url: str) -> Iterator[WorkerProcess]:
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": module_store_url}
    os.environ.update(env)
    from tests.support.apps import crash as crash_app

    crash_app.app.conf.reliable_database_url = module_store_url
    reset(crash_app.app)  # the module-scoped store of the other parameter was used before
    crash_app.create_tables()
    with celery_worker("tests.support.apps.crash", env, concurrency=2) as process:
        yield process


@pytest.fixture(scope="module")
def client(broker: str) -> Celery:
    """Publishes by name, as a web process would."""
    return Celery("crash-client", broker=broker, backend=broker, set_as_current=False)


def effect_count(store_url: str, order_id: str) -> int:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sa.select(sa.func.count())
                    .select_from(effects)
                    .where(effects.c.order_id == order_id)
                ).scalar_one()
            )
    finally:
        engine.dispose()


def kill_when_ready(broker: str, order_id: str, result: Any, timeout: float = 20) -> int:
    """SIGKILL the pool process running ``result``'s job once it stands at its kill
    point and the worker's main process has linked the job to it; its pid."""
    client = redis.Redis.from_url(broker)
    pid = int(
        wait_until(
            lambda: client.get(f"crash:ready:{order_id}"),
            f"the task for {order_id} to reach its kill point",
            timeout=timeout,
        )
    )
    # The main process must have read the child's "job accepted" message first: a
    # child killed before that is not linked to its job by billiard, and the job waits
    # for its hard time limit instead of being redelivered. From then on the worker
    # lists the job as active, in that child.
    wait_until(
        lambda: running_in(result, pid),
        f"the worker to list {result.id} as running in process {pid}",
        timeout=timeout,
    )
    os.kill(pid, signal.SIGKILL)
    return pid


def running_in(result: Any, pid: int) -> bool:
    replies = result.app.control.inspect(timeout=0.5).active() or {}
    return any(
        request.get("id") == result.id and request.get("worker_pid") == pid
        for requests in replies.values()
        for request in requests
    )


@pytest.mark.one_store_in_make_test("sqlite")
def test_killed_before_the_effect_is_taken_over_and_runs_once(
    client: Celery, broker: str, worker: WorkerProcess, module_store_url: str
) -> None:
    order = uuid.uuid4().hex
    result = client.send_task("crash.charge", (order, "before-effect"))
    killed = kill_when_ready(broker, order, result)
    assert wait_for_outcome(result, timeout=60) == "SUCCESS", worker.output
    assert result.get(timeout=1) == "charged"
    events = recorded(broker, result.id, 1)
    outcomes = [e["outcome"] for e in events]
    # the dead child sent nothing; the redelivery waited for the lease, then took over
    assert outcomes[-1] == "succeeded", outcomes
    assert set(outcomes[:-1]) <= {"snoozed"}, outcomes
    assert all(e["pid"] != killed for e in events)
    assert effect_count(module_store_url, order) == 1
    assert "took over idempotency key" in worker.output
    assert "WorkerLostError" in worker.output or "exited prematurely" in worker.output


def test_killed_after_the_commit_is_a_duplicate(
    client: Celery, broker: str, worker: WorkerProcess, module_store_url: str
) -> None:
    order = uuid.uuid4().hex
    result = client.send_task("crash.charge", (order, "after-effect"))
    kill_when_ready(broker, order, result)
    assert wait_for_outcome(result, timeout=60) == "SUCCESS", worker.output
    events = recorded(broker, result.id, 1)
    assert [e["outcome"] for e in events] == ["duplicate"], events
    # The first execution died before it returned, so no value was stored with its
    # receipt: the duplicate returns None (documented in docs/idempotency.md).
    assert result.get(timeout=1) is None
    assert effect_count(module_store_url, order) == 1
    # the message was redelivered, and its claim answered before the body ran
    assert worker.output.count(f"Task crash.charge[{result.id}] received") == 2
    assert redis.Redis.from_url(broker).llen(f"crash:started:{order}") == 1
