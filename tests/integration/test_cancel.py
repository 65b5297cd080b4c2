"""A cancel that holds (``celery reliable cancel``), on real prefork workers, a real
Redis, and a SQLite and a PostgreSQL store.

A running job with a heartbeat ends CANCELLED at its next beat; one that has not
started ends CANCELLED when it would start (its countdown runs out, a retry comes due,
a worker started later receives it) and never runs; a plain ``celery revoke`` keeps
Celery's REVOKED. What did not happen is proven by what happens instead: the CANCELLED
state is stored when the job would have started, in place of its run.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable.longrun.cancel import cancel_of, requester
from celery_reliable.store import migrate, store_for
from celery_reliable.testing import reset
from tests.docs_blocks import DOCS, marked_block
from tests.support.celery_apps import new_redis_db
from tests.support.cli import run_reliable
from tests.support.outcomes import outcomes_key, recorded
from tests.support.servers import free_port
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

#: Seconds a job waits for its countdown: long enough to be cancelled meanwhile.
COUNTDOWN = 3.0
APP = "tests.support.apps.cancel"


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
    from tests.support.apps import cancel

    cancel.app.conf.reliable_database_url = store
    reset(cancel.app)  # the module-scoped store of the other parameter was used before
    found = store_for(cancel.app)
    assert found is not None
    migrate.upgrade(found.engine)  # PostgreSQL must be at head before a worker uses it
    return cancel


@pytest.fixture(scope="module")
def worker(broker: str, store: str, app: Any) -> Iterator[WorkerProcess]:
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    with celery_worker(APP, env, concurrency=3) as w:
        yield w


@pytest.fixture(scope="module")
def effects(broker: str) -> redis.Redis:
    return redis.Redis.from_url(broker)


def cli(
    broker: str, store: str, *args: str, app: str = APP, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """In this process, or in one of its own (``process``: the entry point, once;
    tests/support/cli.py)."""
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}
    return run_reliable(app, env, *args, process=process)


def scheduled_on_a_worker(app: Any, task_id: str) -> bool:
    """The worker received the job and holds it until its countdown runs out."""
    answers = app.app.control.inspect(timeout=0.5).scheduled() or {}
    return any(
        (entry.get("request") or {}).get("id") == task_id
        for entries in answers.values()
        for entry in entries or []
    )


def test_a_running_job_with_a_heartbeat_ends_cancelled_at_its_next_beat(
    app: Any, broker: str, store: str, worker: WorkerProcess, effects: redis.Redis
) -> None:
    from celery_reliable.longrun.progress import progress_of

    result = app.beating.apply_async()
    wait_until(lambda: progress_of(app.app, result.id), "a beat in the store")
    done = cli(broker, store, "cancel", result.id, "--reason", "wrong file", process=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1, done.stdout
    assert done.stdout.startswith(f"cancelled {result.id}: it runs with a heartbeat"), done.stdout
    assert "it ends CANCELLED at its next beat" in done.stdout
    info = result.get(timeout=30)
    assert info["outcome"] == "cancelled", worker.output
    assert info["reason"] == f"cancelled by {requester()}: wrong file"
    assert result.state == "CANCELLED"
    # The body stopped at the beat: it left its loop without finishing it (its
    # `finally` ran before the state was stored, and nothing runs the body after it).
    assert effects.exists(f"left:{result.id}")
    assert not effects.exists(f"finished:{result.id}")
    events = recorded(broker, result.id, 1)
    assert [e["outcome"] for e in events] == ["cancelled"]
    # Cancelled twice: the first cancel stands, and the command says so.
    again = cli(broker, store, "cancel", result.id, "--reason", "another")
    assert again.returncode == 0, again.stderr
    assert f"{result.id} was already cancelled (cancelled by" in again.stdout
    assert ": wrong file, " in again.stdout and "already ended (CANCELLED)" in again.stdout
    kept = cancel_of(app.app, result.id)
    assert kept is not None and kept.reason == "wrong file"


def test_a_job_with_a_countdown_ends_cancelled_when_due_and_never_runs(
    app: Any, broker: str, store: str, worker: WorkerProcess, effects: redis.Redis
) -> None:
    from celery_reliable.store.timeutil import utcnow

    since = utcnow().replace(second=0, microsecond=0)  # the history counts by minute
    published = time.monotonic()
    result = app.mark.apply_async(countdown=COUNTDOWN)
    wait_until(lambda: scheduled_on_a_worker(app, result.id), "the worker to hold the job")
    done = cli(broker, store, "cancel", result.id, "--reason", "not needed")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (
        f"cancelled {result.id}: it ends CANCELLED when a worker would start it\n"
    ), done.stdout
    # get() waits on the result backend: the first terminal state it hears of is
    # CANCELLED (a REVOKED stored first would have raised TaskRevokedError here).
    info = result.get(timeout=30)
    assert info["outcome"] == "cancelled", worker.output
    assert info["reason"] == f"cancelled by {requester()}: not needed"
    assert time.monotonic() - published >= COUNTDOWN - 0.5  # when it would have started
    # Stored in place of its run: the body never ran.
    assert not effects.exists(f"ran:{result.id}")
    [event] = recorded(broker, result.id, 1)
    assert event["outcome"] == "cancelled" and event["reason"] == info["reason"]
    assert f"Discarding cancelled task: cx.mark[{result.id}]" in worker.output
    # The worker's main process counted it in the outcome history.
    history = store_for(app.app)
    assert history is not None
    wait_until(
        lambda: history.history.counts_by_task(since).get("cx.mark", {}).get("cancelled"),
        "the cancelled outcome in the history",
        seen=lambda: history.history.counts_by_task(since),
    )


def test_a_retry_cancelled_between_attempts_ends_cancelled(
    app: Any, broker: str, worker: WorkerProcess, effects: redis.Redis
) -> None:
    result = app.flaky.apply_async()
    [first] = recorded(broker, result.id, 1)
    assert first["outcome"] == "retried"
    started = time.monotonic()
    # As docs/long-tasks.md cancels from Python.
    namespace: dict[str, Any] = {"app": app.app, "task_id": result.id}
    exec(marked_block(DOCS / "long-tasks.md", "long-tasks-cancel"), namespace)
    done = namespace["done"]
    assert time.monotonic() - started < app.RETRY_WAIT  # cancelled before the retry is due
    assert done.new and done.stage in ("not started", "between attempts"), done
    assert done.broadcast_error is None
    info = result.get(timeout=30)
    assert info["outcome"] == "cancelled", worker.output
    assert info["reason"] == f"cancelled by {requester()}: the customer changed the order"
    assert info["attempt"] == 2  # the retry's, which never ran
    assert effects.get(f"attempts:{result.id}") == b"1"
    assert [e["outcome"] for e in recorded(broker, result.id, 2)] == ["retried", "cancelled"]


def test_a_cancel_the_worker_never_heard_is_read_from_the_store(
    app: Any, effects: redis.Redis, worker: WorkerProcess
) -> None:
    """Written to the store only (no broadcast, as for a worker that was disconnected):
    the worker reads it within seconds, before the job's countdown runs out."""
    task_id = str(uuid.uuid4())
    found = store_for(app.app)
    assert found is not None
    found.cancels.request(task_id, "missed the broadcast", "test")
    result = app.mark.apply_async(task_id=task_id, countdown=6)
    info = result.get(timeout=30)
    assert info["outcome"] == "cancelled", worker.output
    assert info["reason"] == "cancelled by test: missed the broadcast"
    assert not effects.exists(f"ran:{task_id}")


def test_a_job_cancelled_while_no_worker_runs_ends_cancelled_once_one_starts(
    redis_url: str, store: str, app: Any
) -> None:
    lone = new_redis_db(redis_url)  # not the module's worker's
    env = {"RELIABLE_TEST_BROKER": lone, "RELIABLE_TEST_STORE": store}
    client = Celery("cancel-client", broker=lone, backend=lone, set_as_current=False)
    result = client.send_task("cx.mark")
    done = cli(lone, store, "cancel", result.id)
    assert done.returncode == 0, done.stderr
    assert "it ends CANCELLED when a worker would start it" in done.stdout
    with celery_worker(APP, env, concurrency=1) as started_later:
        info = result.get(timeout=30)
        assert info["outcome"] == "cancelled", started_later.output
        assert info["reason"] == f"cancelled by {requester()}"
        assert "cancelled jobs loaded" in started_later.output
    assert not redis.Redis.from_url(lone).exists(f"ran:{result.id}")


def test_a_plain_revoke_stays_celery_s_revoked(
    app: Any, effects: redis.Redis, worker: WorkerProcess
) -> None:
    from celery_reliable.results import wait_for_outcome

    result = app.mark.apply_async(countdown=COUNTDOWN)
    wait_until(lambda: scheduled_on_a_worker(app, result.id), "the worker to hold the job")
    app.app.control.revoke(result.id)
    assert wait_for_outcome(result, timeout=30) == "REVOKED", worker.output
    # (Celery 5.7 stores REVOKED at the revoke itself; earlier ones when it comes due.)
    wait_until(
        lambda: f"Discarding revoked task: cx.mark[{result.id}]" in worker.output,
        "the worker to drop the job when it comes due",
    )
    assert not effects.exists(f"ran:{result.id}")
    assert result.state == "REVOKED"
    assert not effects.exists(outcomes_key(result.id))  # no CANCELLED outcome either


def test_cancel_without_a_store_is_one_line_and_fails_without_a_broker_it_holds(
    broker: str, store: str, tmp_path: Path
) -> None:
    if store.startswith("postgresql"):
        down = f"postgresql+psycopg://reliable@127.0.0.1:{free_port()}/reliable"
    else:
        down = f"sqlite:///{tmp_path}/missing/store.sqlite3"
    done = cli(broker, down, "cancel", "some-job")
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("Error: the store is unavailable: "), done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stdout == ""
    # A broker that is down is not an error: the cancel is in the store, where the
    # workers read it.
    job = str(uuid.uuid4())
    no_broker = cli(f"redis://127.0.0.1:{free_port()}/0", store, "cancel", job)
    assert no_broker.returncode == 0, no_broker.stderr
    assert no_broker.stdout.startswith(f"cancelled {job}: it ends CANCELLED when"), no_broker
    assert "running workers were not told at once (broker: " in no_broker.stdout
    none = cli(broker, store, "cancel", "some-job", app=f"{APP}:no_store_app")
    assert none.returncode == 1
    assert none.stderr == "Error: reliable_database_url is None: there is no store\n"
