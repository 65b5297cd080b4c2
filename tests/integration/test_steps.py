"""Resumable steps on real prefork workers, a real Redis and real SIGKILLs: each item
is written exactly once, and a finished step never runs again, whether the job is
resumed after its whole worker was killed in the middle of an item or after a retry.

Every test runs on a SQLite store and on a PostgreSQL one; the items table is in the
store's database (``tests/support/apps/steps.py``). What ran is counted in Redis.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from celery_reliable.store import store_for
from celery_reliable.testing import reset
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

APP = "tests.support.apps.steps"


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def store(module_store_url: str) -> str:
    return module_store_url


@pytest.fixture(scope="module")
def app(broker: str, store: str) -> Any:
    os.environ["RELIABLE_TEST_BROKER"] = broker
    os.environ["RELIABLE_TEST_STORE"] = store
    from tests.support.apps import steps

    steps.app.conf.reliable_database_url = store
    reset(steps.app)  # the module-scoped store of the other parameter was used before
    steps.create_tables()  # PostgreSQL must be at head before a worker uses it
    return steps


def written(app: Any, batch: str) -> Counter[int]:
    """How many rows each item of ``batch`` has."""
    store = store_for(app.app)
    assert store is not None
    query = sa.select(app.items.c.n).where(app.items.c.batch == batch)
    with store.engine.connect() as connection:
        return Counter(connection.execute(query).scalars())


def step_rows(app: Any, batch: str) -> dict[str, Any]:
    store = store_for(app.app)
    assert store is not None
    return {row.step: row for row in store.steps.of_job("steps.import_items", f"import:{batch}")}


@pytest.mark.one_store_in_make_test("postgresql")
def test_a_whole_worker_killed_mid_item_is_resumed_elsewhere_and_writes_each_item_once(
    redis_url: str, store: str, app: Any
) -> None:
    """The host is lost (main process and pool SIGKILLed) while item 8 is written and
    advanced but not committed. The message is rescued after the visibility timeout and
    the key taken over once its lease runs out; the rescuer skips ``prepare`` and goes
    on from the cursor: items 1 to 7 once from the first run, 8 to 20 once from the
    second."""
    broker = new_redis_db(redis_url)  # not the module's worker's
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    client = Celery("steps-kill-client", broker=broker, backend=broker, set_as_current=False)
    counts = redis.Redis.from_url(broker)
    batch = f"k-{uuid.uuid4().hex[:8]}"
    with celery_worker(APP, env, concurrency=1, new_session=True) as doomed:
        result = client.send_task("steps.import_items", (batch, 7, "kill"))
        wait_until(lambda: counts.get(f"waiting:{batch}") == b"7", "item 7 committed")
        with celery_worker(APP, env, concurrency=1) as rescuer:
            counts.set(f"go:{batch}", 1)
            wait_until(
                lambda: counts.get(f"in-transaction:{batch}") == b"8",
                "item 8 written and advanced, not committed",
                seen=lambda: doomed.output[-2000:],
            )
            killed_at = time.monotonic()
            doomed.kill_group()
            assert result.get(timeout=90) == 20, rescuer.output
            took = time.monotonic() - killed_at
    assert written(app, batch) == Counter(range(1, 21)), written(app, batch)
    assert counts.get(f"prepared:{batch}") == b"1"  # not run again by the rescuer
    runs = counts.lrange(f"runs:{batch}", 0, -1)
    assert len(runs) >= 2 and runs[0] != runs[-1], runs
    rows = step_rows(app, batch)
    assert rows["prepare"].finished and rows["items"].finished
    assert rows["items"].cursor == "20"
    # 7 advances committed by the first run (the 8th rolled back), 13 by the rescuer.
    assert rows["items"].advances == 20
    lease = app.import_items._reliable_lease  # 5 + 5 + 5
    assert took < app.VISIBILITY_TIMEOUT + 2.0 + lease + 15.0, (took, rescuer.output)
    assert "took over idempotency key" in rescuer.output
    assert "step 'prepare' finished in an earlier execution" in rescuer.output
    assert "step 'items' resumes at cursor 7" in rescuer.output


@pytest.fixture(scope="module")
def worker(broker: str, store: str, app: Any) -> Iterator[WorkerProcess]:
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    with celery_worker(APP, env, concurrency=2) as w:
        yield w


def test_a_retry_resumes_after_the_last_item_and_skips_the_finished_step(
    app: Any, broker: str, worker: WorkerProcess
) -> None:
    batch = f"r-{uuid.uuid4().hex[:8]}"
    result = app.import_items.apply_async((batch, 5, "raise"))
    assert result.get(timeout=60) == 20, worker.output
    events = recorded(broker, result.id, 2)
    assert [e["outcome"] for e in events] == ["retried", "succeeded"], events
    assert events[0]["exc_type"] == "ItemFailed"
    assert written(app, batch) == Counter(range(1, 21))
    counts = redis.Redis.from_url(broker)
    assert counts.get(f"prepared:{batch}") == b"1"
    assert counts.llen(f"runs:{batch}") == 2
    rows = step_rows(app, batch)
    assert rows["items"].advances == 20 and rows["items"].finished
    # Done: the same key again is a DUPLICATE, and runs nothing.
    again = app.import_items.apply_async((batch, 5, "raise"))
    assert again.get(timeout=60) == 20
    assert [e["outcome"] for e in recorded(broker, again.id, 1)] == ["duplicate"]
    assert counts.llen(f"runs:{batch}") == 2
