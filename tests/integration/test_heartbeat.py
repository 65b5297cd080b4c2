"""Heartbeats end a stuck execution long before its time limit, on real workers.

Prefork (Celery's default) and solo: ``celery worker`` processes; the outcomes are
written to Redis from the processes that send them (``tests/support/outcomes.py``).
Every test runs on a SQLite store and on a PostgreSQL one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable.results import wait_for_outcome
from celery_reliable.store import migrate, store_for
from celery_reliable.testing import reset
from tests.support.backend_states import stored_states
from tests.support.celery_apps import new_redis_db
from tests.support.cli import run_reliable
from tests.support.outcomes import recorded
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]


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
    from tests.support.apps import heartbeat

    heartbeat.app.conf.reliable_database_url = store
    reset(heartbeat.app)  # the module-scoped store of the other parameter was used before
    found = store_for(heartbeat.app)
    assert found is not None
    migrate.upgrade(found.engine)  # PostgreSQL must be at head before a worker uses it
    return heartbeat


@pytest.fixture(scope="module")
def worker(broker: str, store: str, app: Any) -> Iterator[WorkerProcess]:
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    with celery_worker("tests.support.apps.heartbeat", env, concurrency=3) as w:
        yield w


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
    """Killed, it goes from running to its outcome: the result backend never stored
    REVOKED for it (Celery's ``Request.terminate`` stored it first, ~30 ms before the
    outcome replaced it, and a poll could see it). Every state the backend stored is
    heard, in order: REVOKED would have come before FAILURE."""
    task_id = str(uuid.uuid4())
    with stored_states(broker, task_id) as stored:
        result = app.stuck_in_c.apply_async(task_id=task_id)
        assert stored("FAILURE", "REVOKED", timeout=40) == ["FAILURE"], worker.output
    assert wait_for_outcome(result, timeout=5) == "FAILURE", worker.output
    events = recorded(broker, result.id, 1)
    assert [e["outcome"] for e in events] == ["failed"], worker.output
    assert "its pool process was killed" in events[0]["reason"], events
    assert "heartbeat_timeout=1s" in events[0]["reason"]
    # How long it ran, from Celery's wall-clock start (it read -1796599803 s once).
    [ran] = re.findall(rf"id={result.id} attempt=1 outcome=failed duration=(\S+)s", worker.output)
    assert 2.0 < float(ran) < 40.0, ran
    # The worker replaced the process and goes on.
    assert app.beating.apply_async((0.1,)).get(timeout=30) == "done"


def test_a_body_stuck_in_c_code_is_decided_by_its_rules_once_killed(
    app: Any, broker: str, worker: WorkerProcess
) -> None:
    """retry_on(HeartbeatTimeout, attempts=2): the killed execution is retried (its
    message acked, not requeued by reject_on_worker_lost), the retry killed again and
    exhausted; two runs in all. The backend stored RETRY then FAILURE, never REVOKED."""
    task_id = str(uuid.uuid4())
    with stored_states(broker, task_id) as stored:
        result = app.stuck_in_c_retried.apply_async(task_id=task_id)
        assert stored("FAILURE", timeout=60) == ["RETRY", "FAILURE"], worker.output
    events = recorded(broker, result.id, 2)
    assert [e["outcome"] for e in events] == ["retried", "exhausted"], worker.output
    assert {e["exc_type"] for e in events} == {"HeartbeatTimeout"}
    assert all("its pool process was killed" in e["reason"] for e in events), events
    # The worker replaced both processes and goes on; only then is the count final.
    assert app.beating.apply_async((0.1,)).get(timeout=30) == "done"
    runs = redis.Redis.from_url(broker).get(f"stuck-runs:{result.id}")
    assert runs == b"2", (runs, worker.output)


@pytest.mark.one_store_in_make_test("postgresql")
def test_a_beating_keyed_task_keeps_its_key_past_its_lease(
    app: Any, broker: str, worker: WorkerProcess
) -> None:
    assert app.keyed._reliable_lease == 8.0  # 1 + grace 2 + margin 5, not the time limit
    order = f"o-{uuid.uuid4().hex[:8]}"  # the broker's Redis is shared by both stores' runs
    first = app.keyed.apply_async((order, 10))
    client = redis.Redis.from_url(broker)
    # Its body runs: it holds the key.
    wait_until(
        lambda: client.get(f"running:{order}") == first.id.encode(), "the first job to start"
    )
    second = app.keyed.apply_async((order, 10))
    assert first.get(timeout=60) == f"done {order}", worker.output
    assert second.get(timeout=60) == f"done {order}", worker.output
    assert client.get(f"effects:{order}") == b"1"
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


def cli(
    broker: str, store: str, *args: str, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """In this process, or in one of its own (``process``: the entry point, once for
    ``progress`` and once for ``report``; tests/support/cli.py)."""
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    return run_reliable("tests.support.apps.heartbeat", env, *args, process=process)


def test_progress_is_read_while_the_job_runs_and_gone_when_it_ends(
    app: Any, broker: str, store: str, worker: WorkerProcess
) -> None:
    from celery_reliable.longrun.progress import progress_of

    stop = f"stop:{uuid.uuid4().hex}"  # the broker's Redis is shared by both stores' runs
    result = app.import_rows.apply_async((1000, stop))
    seen = wait_until(
        lambda: (p := progress_of(app.app, result.id)) is not None and (p.progress or 0) > 0 and p,
        "a heartbeat with progress in the store",
    )
    assert seen.task_name == "hb.import_rows" and seen.details["row"] >= 1
    assert seen.hostname and seen.hostname.startswith("test-")
    piped = cli(broker, store, "progress", result.id, process=True)
    assert piped.returncode == 0, piped.stderr
    fields = piped.stdout.rstrip("\n").split("\t")
    assert len(piped.stdout.splitlines()) == 1
    assert fields[0] == result.id and fields[1] == "hb.import_rows"
    assert fields[2].endswith("%") and fields[4] == "running"
    assert json.loads(fields[6])["row"] >= seen.details["row"]
    as_json = cli(broker, store, "progress", result.id, "--json")
    data = json.loads(as_json.stdout)
    assert data["task_id"] == result.id and 0 < data["progress"] < 1
    listed = cli(broker, store, "progress")
    assert result.id in listed.stdout
    report = cli(broker, store, "report", "hb.import_rows", process=True)
    assert report.returncode == 0, report.stderr
    for expected in (
        "- Heartbeat: heartbeat_timeout=5s: a silent body gets HeartbeatTimeout after 5s, "
        "and on prefork its process is killed 5s later\n",
        "- Running with a heartbeat now: 1 (the longest silent for ",
    ):
        assert expected in report.stdout, report.stdout
    redis.Redis.from_url(broker).set(stop, 1)
    stopped_at = result.get(timeout=30)
    assert 1 <= stopped_at < 1000
    # It ended: its row is gone, and the command says so in one line.
    assert progress_of(app.app, result.id) is None
    gone = cli(broker, store, "progress", result.id)
    assert gone.returncode == 1
    assert "no heartbeat recorded for" in gone.stderr


@pytest.mark.one_store_in_make_test("sqlite")
def test_a_whole_worker_killed_mid_beat_frees_its_key_within_its_lease(
    redis_url: str, store: str, app: Any
) -> None:
    from celery_reliable.longrun.progress import progress_of

    """The host is lost (main process and pool SIGKILLed) while a keyed task beats: the
    message is rescued after the visibility timeout, and the key, whose lease the beats
    kept at heartbeat_timeout + grace + 5 s, is taken over once that runs out from the
    last beat, not after a time limit. The effect is written once."""
    broker = new_redis_db(redis_url)  # not the module's worker's
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    client = Celery("kill-client", broker=broker, backend=broker, set_as_current=False)
    effects = redis.Redis.from_url(broker)
    order = f"k-{uuid.uuid4().hex[:8]}"
    with celery_worker(
        "tests.support.apps.heartbeat", env, concurrency=1, new_session=True
    ) as doomed:
        result = client.send_task("hb.keyed_until_released", (order,))
        wait_until(lambda: effects.llen(f"runs:{order}") == 1, "the first run to beat")
        # A beat reached the store: the lease now runs from the beats.
        wait_until(lambda: progress_of(app.app, result.id), "a beat in the store")
        with celery_worker("tests.support.apps.heartbeat", env, concurrency=1) as rescuer:
            killed_at = time.monotonic()
            doomed.kill_group()
            effects.set(f"release:{order}", 1)
            assert result.get(timeout=90) == f"done {order}", rescuer.output
            took = time.monotonic() - killed_at
    assert effects.get(f"effects:{order}") == b"1"
    runs = effects.lrange(f"runs:{order}", 0, -1)
    assert len(runs) == 2 and runs[0] != runs[1], runs  # the rescuer ran it, once
    lease = app.keyed_until_released._reliable_lease  # 1 + 2 + 5
    bound = app.VISIBILITY_TIMEOUT + 2.0 + lease + 10.0  # rescue interval; snooze steps
    assert took < bound, (took, rescuer.output)
    assert "took over idempotency key" in rescuer.output
