"""The outcome history on real workers and real stores: a burst counted per task,
queue and minute, written by the background writer and on graceful shutdown (thread
pool and prefork children), pruned by the worker, kept while the store is down."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from celery_reliable import Discard, Outcome, ReliableTask
from celery_reliable.results import wait_for_outcome
from celery_reliable.store import store_for
from celery_reliable.store.history import MinuteCounts
from celery_reliable.store.timeutil import utcnow
from celery_reliable.wiring import flush_history
from tests.helpers import ready_store
from tests.support.celery_apps import fresh_postgres_database, new_redis_db
from tests.support.waiting import wait_until
from tests.support.workers import celery_worker, embedded_worker

pytestmark = pytest.mark.integration


def _burst_app(make_app: Any, name: str, store_url: str, **conf: Any) -> tuple[Any, Any]:
    app = make_app(name, reliable_database_url=store_url, **conf)
    ready_store(app)

    @app.task(base=ReliableTask, shared=False, name=f"{name}.work")
    def work(n: int) -> int:
        if n % 4 == 0:
            raise Discard("multiples of four are not wanted")
        time.sleep(0.002)  # a body that takes a little time: the durations are not 0
        return n

    return app, work


def _run_burst(work: Any, count: int) -> None:
    results = [work.delay(n) for n in range(count)]
    for result in results:
        wait_for_outcome(result, timeout=30)


def test_a_burst_is_written_when_the_worker_stops(make_app: Any, store_url: str) -> None:
    app, work = _burst_app(make_app, "hist-stop", store_url, reliable_history_interval=3600)
    store = store_for(app)
    with embedded_worker(app):
        _run_burst(work, 40)
        # An hour between writes: nothing is in the store before the worker stops.
        assert store.history.summary(work.name).executions == 0
    summary = store.history.summary(work.name)
    assert dict(summary.counts) == {"succeeded": 30, "discarded": 10}
    assert summary.duration_count == 40
    assert summary.median_duration is not None and 0 < summary.median_duration < 1
    queues = {queue for _, _, queue, _, _ in store.history.minutes(work.name)}
    assert queues == {"celery"}


def test_the_background_writer_writes_every_interval(make_app: Any, store_url: str) -> None:
    app, work = _burst_app(make_app, "hist-interval", store_url, reliable_history_interval=0.3)
    store = store_for(app)
    with embedded_worker(app):
        _run_burst(work, 12)
        wait_until(
            lambda: store.history.summary(work.name).executions >= 12,
            "12 executions in the history, written by the background writer",
            timeout=10,
            interval=0.1,
            seen=lambda: store.history.summary(work.name),
        )
        assert dict(store.history.summary(work.name).counts) == {"succeeded": 9, "discarded": 3}


def test_prefork_children_write_their_counts_on_graceful_shutdown(
    redis_url: str, store_url: str
) -> None:
    from celery import Celery

    broker = new_redis_db(redis_url)
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store_url}
    client = Celery("history-client", broker=broker, backend=broker, set_as_current=False)
    client.conf.reliable_database_url = store_url
    store = ready_store(client)
    with celery_worker("tests.support.apps.history", env, concurrency=2) as worker:
        results = [client.send_task("history.work", (n,)) for n in range(20)]
        for result in results:
            wait_for_outcome(result, timeout=30)
        assert store.history.summary("history.work").executions == 0
        worker.stop()  # SIGTERM: a warm shutdown; each pool child flushes as it exits
        assert worker.proc.returncode == 0, worker.output
    summary = store.history.summary("history.work")
    assert dict(summary.counts) == {"succeeded": 15, "discarded": 5}, worker.output


def test_the_prune_cycle_deletes_minutes_past_the_retention(make_app: Any, store_url: str) -> None:
    app, work = _burst_app(
        make_app,
        "hist-prune",
        store_url,
        reliable_prune_interval=0.2,
        reliable_history_retention=24 * 3600,
    )
    history = store_for(app).history
    now = utcnow().replace(second=0, microsecond=0)
    old = now - timedelta(days=2)
    counts = MinuteCounts()
    counts.add(0.5)
    history.add({(work.name, old, "celery", "succeeded"): counts})
    history.add({(work.name, now, "celery", "succeeded"): counts})
    week = now - timedelta(days=7)
    assert history.summary(work.name, since=week).executions == 2
    # Periodic slots older than the receipts kept (7 days) go in the same cycle, but for
    # each entry's newest, which says where its schedule stands.
    slots = store_for(app).beat_runs
    for days in (9, 8):
        assert slots.claim("e", now - timedelta(days=days), task_name="t", task_id=f"{days}",
                           by="b", lease_seconds=1)  # fmt: skip
    with embedded_worker(app):
        wait_until(
            lambda: history.summary(work.name, since=week).executions == 1,
            "the old minute to be pruned",
            timeout=10,
            interval=0.1,
            seen=lambda: history.summary(work.name, since=week),
        )
        wait_until(lambda: len(slots.all("e")) == 1, "the old slot pruned", seen=slots.all)
    assert [row[0] for row in history.minutes(work.name, since=week)] == [now]
    assert [run.task_id for run in slots.all("e")] == ["8"]


def test_counts_are_kept_while_the_store_is_down_and_written_when_it_is_back(
    make_app: Any, tmp_path: Path, caplog: Any
) -> None:
    later = tmp_path / "later"
    app = make_app(
        "hist-down",
        reliable_database_url=f"sqlite:///{later}/store.sqlite3",
        reliable_history_interval=3600,
    )

    @app.task(base=ReliableTask, shared=False, name="hist-down.work")
    def work(n: int) -> int:
        return n

    caplog.set_level(logging.INFO, logger="celery_reliable.history")
    # The directory does not exist: the store is down for the whole run.
    with embedded_worker(app):
        _run_burst(work, 8)
    flush_history(app)  # still down: a second attempt, no second warning
    warnings = [
        r
        for r in caplog.records
        if r.name == "celery_reliable.history" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1, "one warning per outage, not one per attempt"
    assert "kept in memory until the store is back" in warnings[0].getMessage()

    later.mkdir()
    flush_history(app)
    summary = store_for(app).history.summary(work.name)
    assert summary.counts == {Outcome.SUCCEEDED.value: 8}
    assert any("written again" in r.getMessage() for r in caplog.records)


def test_history_off_writes_nothing(make_app: Any, tmp_path: Path) -> None:
    app, work = _burst_app(
        make_app, "hist-off", f"sqlite:///{tmp_path}/store.sqlite3", reliable_history=False
    )
    with embedded_worker(app):
        _run_burst(work, 4)
    assert store_for(app).history.summary(work.name).executions == 0


def test_eager_calls_record_nothing_and_start_no_thread(make_app: Any, tmp_path: Path) -> None:
    """Only workers keep history: a test's or a script's apply() leaves none, and no
    writer thread outlives it (Celery's own suite checks that no test leaks a thread)."""
    app, work = _burst_app(make_app, "hist-eager", f"sqlite:///{tmp_path}/store.sqlite3")
    before = set(threading.enumerate())
    for n in range(1, 4):
        assert work.apply((n,)).get() == n
    assert set(threading.enumerate()) - before == set()
    flush_history(app)
    assert store_for(app).history.summary(work.name).executions == 0


def test_writers_of_the_same_minutes_at_once_sum_without_deadlock(store_url: str) -> None:
    """Prefork children exiting together write the same rows at once, each in the
    order it first saw the outcomes: on PostgreSQL, two writers locking the same rows
    in opposite orders deadlocked (found by the version matrix)."""
    from celery import Celery

    app = Celery("hist-race", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = store_url
    history = ready_store(app).history
    minute = utcnow().replace(second=0, microsecond=0)
    keys = [("race.task", minute, "celery", outcome) for outcome in ("succeeded", "discarded")]
    rounds = 150
    errors: list[BaseException] = []
    together = threading.Barrier(2)

    def writer(order: list[Any]) -> None:
        try:
            for _ in range(rounds):
                rows = {}
                for key in order:
                    counts = MinuteCounts()
                    counts.add(0.01)
                    rows[key] = counts
                together.wait(10)
                history.add(rows)
        except BaseException as exc:
            errors.append(exc)
            together.abort()

    threads = [threading.Thread(target=writer, args=(order,)) for order in (keys, keys[::-1])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    rows = history.minutes("race.task", since=minute)
    assert {outcome: count for _, _, _, outcome, count in rows} == {
        "succeeded": 2 * rounds,
        "discarded": 2 * rounds,
    }


def test_a_batch_that_fails_leaves_only_itself_to_write_again(postgres_url: str) -> None:
    """Batches commit one by one: after a failure, what was written is not in the rows
    left to write, so the next flush does not add it twice. (PostgreSQL refuses a task
    name longer than its column; SQLite would store it.)"""
    from celery import Celery

    from celery_reliable.store.history import BATCH_ROWS

    app = Celery("hist-batch", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = fresh_postgres_database(postgres_url)
    history = ready_store(app).history
    minute = utcnow().replace(second=0, microsecond=0)
    rows = {}
    for n in range(BATCH_ROWS + 10):
        # Sorted by key, the over-long name comes last: in the second batch.
        name = f"batch.t{n:05d}" if n < BATCH_ROWS + 9 else "batch.z" + "x" * 300
        counts = MinuteCounts()
        counts.add(0.01)
        rows[(name, minute, "celery", "succeeded")] = counts
    with pytest.raises(Exception, match="value too long"):
        history.add(rows)
    assert len(rows) == 10, "the first batch, written, is no longer among the rows to write"
    assert history.summary(since=minute).executions == BATCH_ROWS
