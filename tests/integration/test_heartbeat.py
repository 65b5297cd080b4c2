"""Heartbeats end a stuck execution long before its time limit, on real workers.

Prefork (Celery's default) and solo: ``celery worker`` processes; the outcomes are
written to Redis from the processes that send them (``recording.py``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable.results import wait_for_outcome
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('heartbeat-store') / 'store.db'}"


@pytest.fixture(scope="module")
def worker(broker: str, store: str) -> Iterator[WorkerProcess]:
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    with celery_worker("tests.support.apps.heartbeat", env, concurrency=3) as w:
        yield w


@pytest.fixture(scope="module")
def app(broker: str, store: str, worker: WorkerProcess) -> Any:
    os.environ["RELIABLE_TEST_BROKER"] = broker
    os.environ["RELIABLE_TEST_STORE"] = store
    from tests.support.apps import heartbeat

    return heartbeat


def test_a_silent_body_is_ended_by_its_heartbeat_and_retried(
    app: Any, broker: str, worker: WorkerProcess
) -> None:
    started = time.monotonic()
    result = app.silent_once.apply_async()
    assert result.get(timeout=30) == "done", worker.output
    took = time.monotonic() - started
    events = recorded(broker, result.id, 2)
    assert [e["outcome"] for e in events] == ["retried", "succeeded"], worker.output
    assert events[0]["exc_type"] == "HeartbeatTimeout"
    assert "heartbeat_timeout=2s" in events[0]["reason"]
    # Its time limit is 120 s: the heartbeat (2 s) ended it, within its 1 s repeat.
    assert took < 15, took
    assert "HeartbeatTimeout raised in it" in worker.output


def test_a_body_that_beats_runs_past_its_heartbeat_timeout(app: Any, broker: str) -> None:
    result = app.beating.apply_async((4,))
    assert result.get(timeout=30) == "done"
    assert [e["outcome"] for e in recorded(broker, result.id, 1)] == ["succeeded"]


def test_a_body_stuck_in_c_code_is_killed_after_the_grace(
    app: Any, broker: str, worker: WorkerProcess
) -> None:
    result = app.stuck_in_c.apply_async()
    assert wait_for_outcome(result, timeout=40) == "FAILURE", worker.output
    events = recorded(broker, result.id, 1)
    assert [e["outcome"] for e in events] == ["failed"], worker.output
    assert "its pool process was killed" in events[0]["reason"], events
    assert "heartbeat_timeout=1s" in events[0]["reason"]
    # The worker replaced the process and goes on.
    assert app.beating.apply_async((0.1,)).get(timeout=30) == "done"


def test_a_beating_keyed_task_keeps_its_key_past_its_lease(
    app: Any, broker: str, worker: WorkerProcess
) -> None:
    assert app.keyed._reliable_lease == 8.0  # 1 + grace 2 + margin 5, not the time limit
    first = app.keyed.apply_async(("o1", 10))
    client = redis.Redis.from_url(broker)
    # Its body runs: it holds the key.
    wait_until(lambda: client.get("running:o1") == first.id.encode(), "the first job to start")
    second = app.keyed.apply_async(("o1", 10))
    assert first.get(timeout=60) == "done o1", worker.output
    assert second.get(timeout=60) == "done o1", worker.output
    assert redis.Redis.from_url(broker).get("effects:o1") == b"1"
    outcomes = [e["outcome"] for e in recorded(broker, second.id, 2)]
    assert outcomes[0] == "snoozed" and outcomes[-1] == "duplicate", outcomes
    assert [e["outcome"] for e in recorded(broker, first.id, 1)] == ["succeeded"]


def test_solo_pool_ends_a_silent_body_in_its_own_process(redis_url: str, store: str) -> None:
    solo_broker = new_redis_db(redis_url)  # not the prefork worker's
    env = {"RELIABLE_TEST_BROKER": solo_broker, "RELIABLE_TEST_STORE": store}
    client = Celery("solo_client", broker=solo_broker, backend=solo_broker)
    with celery_worker("tests.support.apps.heartbeat", env, pool="solo", concurrency=1) as w:
        result = client.send_task("hb.silent_once")
        assert result.get(timeout=30) == "done", w.output
        events = recorded(solo_broker, result.id, 2)
        assert [e["outcome"] for e in events] == ["retried", "succeeded"], w.output
        assert events[0]["exc_type"] == "HeartbeatTimeout"
