"""The outbox under SIGKILL, with real processes: ``celery worker`` (prefork) and
``celery reliable relay``, a real Redis, a SQLite and a PostgreSQL store.

* The publishing process SIGKILLed right after its commit: the message still runs, once
  (the worker's own relay thread publishes it). With ``transaction.on_commit`` or
  ``delay_on_commit`` it would be lost.
* A relay SIGKILLed between its publish and its delete: a real double publish (the
  next relay, ``celery reliable relay``, publishes the row again), and the job runs
  once: the second copy is a DUPLICATE, or, arriving while the first runs, SNOOZED and
  then a DUPLICATE.
* ``celery reliable relay``'s lines, its clean SIGTERM, and its refusal without a store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy.orm import Session

from celery_reliable.outbox import publish_in
from celery_reliable.store import Store, store_for
from tests.support.celery_apps import helper_app_module, new_redis_db
from tests.support.cli import run_reliable
from tests.support.outcomes import recorded
from tests.support.waiting import wait_until
from tests.support.workers import ROOT, WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

APP = "tests.support.apps.outbox"


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def env(broker: str, module_store_url: str) -> dict[str, str]:
    return {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": module_store_url}


@pytest.fixture(scope="module")
def helper(env: dict[str, str], module_store_url: str) -> Any:
    return helper_app_module(APP, env, module_store_url)


@pytest.fixture(scope="module")
def store(helper: Any) -> Store:
    found = store_for(helper.app)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def engine(module_store_url: str) -> Iterator[sa.Engine]:
    """The application's own engine."""
    built = sa.create_engine(module_store_url)
    yield built
    built.dispose()


@pytest.fixture(scope="module")
def effects(broker: str) -> redis.Redis:
    return redis.Redis.from_url(broker)


def key(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def python(env: dict[str, str], code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def waiting(store: Store) -> list[str]:
    return [row.task_id for row in store.outbox.all()]


PUBLISH_THEN_DIE = """
import os, signal, sys
import sqlalchemy as sa
from sqlalchemy.orm import Session
from celery_reliable.outbox import publish_in
from tests.support.apps.outbox import mark

engine = sa.create_engine(os.environ["RELIABLE_TEST_STORE"])
with Session(engine) as session, session.begin():
    result = publish_in(session, mark.s(sys.argv[1]))
    print(result.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # right after the commit
"""


def test_a_publisher_killed_right_after_its_commit_still_runs_its_job_once(
    env: dict[str, str], helper: Any, store: Store, effects: redis.Redis, broker: str
) -> None:
    name = key("committed")
    with celery_worker(APP, {**env, "RELIABLE_TEST_OUTBOX_RELAY": "1"}) as worker:
        done = python(env, PUBLISH_THEN_DIE, name)
        assert done.returncode == -signal.SIGKILL, done.stderr
        task_id = done.stdout.strip()
        events = recorded(broker, task_id, 1)
        assert [e["outcome"] for e in events] == ["succeeded"], worker.output
        wait_until(lambda: waiting(store) == [], "the row deleted once published")
        # Nothing is left to publish it again: the row is gone, and a job published
        # after it has run.
        assert helper.mark.delay(key("later")).get(timeout=30)
    assert int(effects.get(f"runs:{name}") or 0) == 1
    assert len(recorded(broker, task_id, 1)) == 1
    assert "celery_reliable outbox: relay started: outbox in " in worker.output


RELAY_THEN_DIE = """
import os, signal, threading
from celery_reliable.outbox import message
from celery_reliable.outbox.relay import Relay
from celery_reliable.store import store_for
from tests.support.apps.outbox import app

publish = message.OutboxMessage.publish

def publish_then_die(self, producer, queues):
    publish(self, producer, queues)  # the broker has it; the row is not deleted yet
    print("published", self.task_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

message.OutboxMessage.publish = publish_then_die
Relay(app, store_for(app), poll_interval=0.2).run(threading.Event())
"""


def cli_relay(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", APP, "reliable", "relay"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="module")
def relayless_worker(env: dict[str, str], helper: Any) -> Iterator[WorkerProcess]:
    """A worker without its relay thread: the test's relays publish."""
    with celery_worker(APP, {**env, "RELIABLE_TEST_OUTBOX_RELAY": "0"}) as worker:
        yield worker


@pytest.mark.parametrize("when", ["after", "during"])
def test_a_relay_killed_between_publish_and_delete_runs_the_job_once(
    env: dict[str, str],
    helper: Any,
    engine: sa.Engine,
    relayless_worker: WorkerProcess,
    when: str,
) -> None:
    """The second copy arrives after the first succeeded (a DUPLICATE), or while it
    runs (SNOOZED, then a DUPLICATE)."""
    broker, effects = env["RELIABLE_TEST_BROKER"], helper.effects
    store = store_for(helper.app)
    assert store is not None
    name = key(when)
    task = helper.mark if when == "after" else helper.block
    with Session(engine) as session, session.begin():
        task_id = publish_in(session, task.s(name)).id

    killed = python(env, RELAY_THEN_DIE)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert killed.stdout == f"published {task_id}\n"
    assert waiting(store) == [task_id]  # published, not deleted: it goes out again
    if when == "after":
        assert [e["outcome"] for e in recorded(broker, task_id, 1)] == ["succeeded"]
    else:
        wait_until(lambda: effects.exists(f"started:{name}"), "the first copy to start")

    relay = cli_relay(env)
    try:
        wait_until(lambda: waiting(store) == [], "the row published again and deleted")
        if when == "during":
            assert [e["outcome"] for e in recorded(broker, task_id, 1)] == ["snoozed"]
            effects.set(f"release:{name}", 1)
        events = recorded(broker, task_id, 3 if when == "during" else 2)
        outcomes = [e["outcome"] for e in events]
        expected = ["succeeded", "duplicate"] if when == "after" else ["snoozed", "succeeded"]
        assert sorted(outcomes[: len(expected)]) == sorted(expected), outcomes
        assert outcomes[-1] == "duplicate", outcomes
    finally:
        relay.send_signal(signal.SIGTERM)
        out, err = relay.communicate(timeout=30)
    assert relay.returncode == 0, err
    assert int(effects.get(f"runs:{name}") or 0) == 1
    # A real double publish: the worker received the message twice.
    assert relayless_worker.output.count(f"[{task_id}] received") >= 2, relayless_worker.output

    lines = [line[20:] for line in out.splitlines()]  # after "YYYY-mm-dd HH:MM:SS "
    assert lines[0].startswith("relay started: outbox in "), out
    assert lines[0].endswith(f"broker {_shown(broker)}")
    assert lines[1].startswith("published 1 message (outbox ids "), out
    assert lines[-2:] == ["SIGTERM: stopping", "relay stopped (1 message published by it)"], out
    assert err == ""


def _shown(url: str) -> str:
    """A broker URL as this kombu shows it, the password hidden (kombu 5.7 writes
    ``redis://:**@host`` also without a password, 5.4 ``redis://host``)."""
    from kombu import Connection

    return str(Connection(url).as_uri())


def test_the_relay_refuses_to_run_without_a_store(env: dict[str, str]) -> None:
    done = run_reliable(APP, {**env, "RELIABLE_TEST_STORE": ""}, "relay", process=True)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == "Error: reliable_database_url is None: there is no store\n"
