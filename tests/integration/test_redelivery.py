"""Orphan rescue and keepalive on Redis, with real prefork workers and a 4 s
``visibility_timeout``: a whole worker SIGKILLed has its message back within the
timeout plus the rescue interval (kombu alone: up to about 100 s more); a task that
runs longer than the timeout, and a countdown longer than it, run once beside an idle
second worker."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from celery_reliable.results import wait_for_outcome
from tests.support.celery_apps import new_redis_db
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

APP = "tests.support.apps.redelivery"
VISIBILITY_TIMEOUT = 4.0
RESCUE_INTERVAL = 0.5


def runs(broker: str, job: str) -> list[tuple[float, str]]:
    items = redis.Redis.from_url(broker).lrange(f"redelivery:runs:{job}", 0, -1)
    return [(float(at), worker) for at, worker in (x.decode().split() for x in items)]


def wait_for_runs(broker: str, job: str, count: int, timeout: float) -> list[tuple[float, str]]:
    return wait_until(
        lambda: (found := runs(broker, job)) and len(found) >= count and found,
        f"{count} run(s) of {job}",
        timeout=timeout,
        seen=lambda: runs(broker, job),
    )


def held(broker: str) -> dict[str, int]:
    """Messages the broker still holds: queued, and delivered but not acknowledged."""
    db = redis.Redis.from_url(broker)
    return {"queued": db.llen("celery"), "unacknowledged": db.hlen("unacked")}


def nothing_left_to_run(broker: str, timeout: float = 30) -> None:
    """Wait until the broker holds no message, queued or unacknowledged: a copy that
    a rescue put back (a second run) is one or the other until its run, which records
    itself first, has ended. Only then does a count of runs prove there is no second."""
    wait_until(
        lambda: not any(held(broker).values()),
        "the queue empty and no message unacknowledged",
        timeout=timeout,
        seen=lambda: held(broker),
    )


@pytest.fixture
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture
def client(broker: str) -> Celery:
    return Celery("redelivery-client", broker=broker, backend=broker, set_as_current=False)


def test_a_whole_worker_killed_is_rescued_within_the_visibility_timeout(
    broker: str, client: Celery
) -> None:
    env = {"RELIABLE_TEST_BROKER": broker}
    with celery_worker(APP, env, concurrency=1, new_session=True) as doomed:
        result = client.send_task("redelivery.hold", ("orphan", 60))
        [(_, first_worker)] = wait_for_runs(broker, "orphan", 1, timeout=20)
        with celery_worker(APP, env, concurrency=1) as rescuer:
            killed_at = time.time()
            doomed.kill_group()
            [_, (second_at, second_worker)] = wait_for_runs(broker, "orphan", 2, timeout=60)
            assert wait_for_outcome(result, timeout=10) == "SUCCESS"
    waited = second_at - killed_at
    assert second_worker != first_worker
    # Back within the visibility timeout plus a rescue interval, and a little for the
    # worker to fetch and start it (kombu's own cycle alone: up to ~100 s more).
    assert waited <= VISIBILITY_TIMEOUT + RESCUE_INTERVAL + 2.0, waited
    assert "rescued 1 message(s)" in rescuer.output


@pytest.fixture(scope="module")
def two_workers(redis_url: str) -> Iterator[tuple[str, WorkerProcess, WorkerProcess]]:
    broker = new_redis_db(redis_url)
    env = {"RELIABLE_TEST_BROKER": broker}
    with (
        celery_worker(APP, env, concurrency=1) as first,
        celery_worker(APP, env, concurrency=1) as second,
    ):
        yield broker, first, second


def test_a_task_longer_than_the_visibility_timeout_runs_once(
    two_workers: tuple[str, WorkerProcess, WorkerProcess],
) -> None:
    broker, first, second = two_workers
    client = Celery("c", broker=broker, backend=broker, set_as_current=False)
    result = client.send_task("redelivery.hold", ("long", 3 * VISIBILITY_TIMEOUT))
    assert wait_for_outcome(result, timeout=40) == "SUCCESS"
    nothing_left_to_run(broker)
    assert len(runs(broker, "long")) == 1, first.output + second.output


def test_a_countdown_longer_than_the_visibility_timeout_runs_once(
    two_workers: tuple[str, WorkerProcess, WorkerProcess],
) -> None:
    broker, first, second = two_workers
    client = Celery("c", broker=broker, backend=broker, set_as_current=False)
    sent = time.time()
    result = client.send_task("redelivery.hold", ("eta", 0), countdown=3 * VISIBILITY_TIMEOUT)
    assert wait_for_outcome(result, timeout=40) == "SUCCESS"
    nothing_left_to_run(broker)
    [(started, _)] = runs(broker, "eta")
    assert started - sent >= 3 * VISIBILITY_TIMEOUT - 0.5
    assert "rescued" not in first.output + second.output


def test_without_the_keepalive_the_long_task_runs_twice(broker: str, client: Celery) -> None:
    """What the keepalive prevents: the idle worker takes the message over."""
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_KEEPALIVE": "0"}
    with celery_worker(APP, env, concurrency=1), celery_worker(APP, env, concurrency=1):
        client.send_task("redelivery.hold", ("unkept", 3 * VISIBILITY_TIMEOUT))
        found = wait_for_runs(broker, "unkept", 2, timeout=30)
        # Seen: the first run need not work out its 12 s before the workers stop.
        redis.Redis.from_url(broker).set("redelivery:release:unkept", 1)
    assert found[1][1] != found[0][1]


def test_a_long_task_still_runs_once_after_the_broker_reconnects() -> None:
    """Redis restarts while a task longer than the visibility timeout runs: the
    worker's consumer reconnects on a new channel, and the running task's message
    (delivered on the old one) must still be kept alive, or the idle worker's rescue
    would run it a second time."""
    from tests.support.servers import RedisServer

    server = RedisServer(persistent=True)
    server.start()
    try:
        broker = f"{server.url}/0"
        env = {"RELIABLE_TEST_BROKER": broker}
        client = Celery("c", broker=broker, backend=broker, set_as_current=False)
        with celery_worker(APP, env, concurrency=1), celery_worker(APP, env, concurrency=1):
            result = client.send_task("redelivery.hold", ("reconnect", 4 * VISIBILITY_TIMEOUT))
            wait_for_runs(broker, "reconnect", 1, timeout=20)
            server.stop()
            time.sleep(1.0)  # the outage itself: Redis is down this long, then back
            server.start()
            assert wait_for_outcome(result, timeout=60) == "SUCCESS"
            nothing_left_to_run(broker, timeout=60)
            found = runs(broker, "reconnect")
        assert len(found) == 1, found
    finally:
        server.remove()
