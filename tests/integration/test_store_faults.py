"""The store down or missing: a claim that cannot be taken is retried and the body never
runs without it; a dead letter that cannot be stored is logged whole; a batch member
that ends while PostgreSQL is stopped is counted once it is started again. (Apart from
test_idempotency.py: each test here runs its own worker, and two embedded workers
must not run at once in one process.)"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_reliable import Batch, Discard, Outcome, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.errors import StoreUnavailable
from celery_reliable.results import wait_for_outcome
from celery_reliable.store import migrate, store_for
from celery_reliable.store.logged_dead_letters import LOGGED_MARKER
from tests.support.batch_endings import held_endings
from tests.support.cli import cli_app as cli
from tests.support.servers import PostgresServer
from tests.support.waiting import wait_until
from tests.support.workers import embedded_worker, settle

pytestmark = pytest.mark.integration


def test_store_down_at_claim_retries_and_never_runs_without_its_claim(
    make_app: Any, outcomes: Any, caplog: Any, tmp_path: Path
) -> None:
    """The store's directory does not exist: every claim fails. The body never runs;
    the attempts run out; the dead letter cannot be stored, so it is logged whole."""
    missing = tmp_path / "not-there"
    app = make_app("store-down", reliable_database_url=f"sqlite:///{missing}/store.sqlite3")
    ran: list[str] = []

    @app.task(
        base=ReliableTask, shared=False, name="down.charge", timeout=5, idempotency_key="{order_id}"
    )
    @retry_on(StoreUnavailable, wait=fixed(0.1), attempts=3)
    def charge(order_id: str) -> None:
        ran.append(order_id)

    caplog.set_level(logging.ERROR, logger="celery_reliable.dead_letters")
    caplog.set_level(logging.WARNING, logger="celery_reliable.store")
    with embedded_worker(app):
        result = charge.apply_async(("o-1",))
        events = outcomes.wait_for(result.id, count=3)
        assert wait_for_outcome(result, timeout=10) == "FAILURE"
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.EXHAUSTED]
    # Three failed claims, one outage: one WARNING.
    assert store_lines(caplog) == ["unavailable"]
    assert all(isinstance(e.exc, StoreUnavailable) for e in events)
    assert ran == [], "the body never ran without its claim"
    logged = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.dead_letters"]
    assert len(logged) == 1 and '"task_name": "down.charge"' in logged[0]
    assert '"args": "[\\"o-1\\"]"' in logged[0]


def store_lines(caplog: Any) -> list[str]:
    """The store's outage lines of the log: "unavailable" and "again"."""
    lines = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.store"]
    said = []
    for line in lines:
        if "the store is unavailable" in line and "keyed tasks are retried" in line:
            said.append("unavailable")
        elif "the store answers again" in line:
            said.append("again")
    return said


def test_store_back_before_the_attempts_run_out(
    make_app: Any, outcomes: Any, tmp_path: Path, caplog: Any
) -> None:
    root = tmp_path
    missing = root / "later"
    app = make_app("store-back", reliable_database_url=f"sqlite:///{missing}/store.sqlite3")
    ran: list[str] = []

    @app.task(
        base=ReliableTask, shared=False, name="back.charge", timeout=5, idempotency_key="{order_id}"
    )
    @retry_on(StoreUnavailable, wait=fixed(0.5), attempts=5)
    def charge(order_id: str) -> str:
        ran.append(order_id)
        return "charged"

    caplog.set_level(logging.WARNING, logger="celery_reliable.store")
    try:
        with embedded_worker(app):
            result = charge.apply_async(("o-2",))
            first = outcomes.wait_for(result.id)[0]
            assert first.outcome is Outcome.RETRIED
            missing.mkdir()  # the database comes back
            assert result.get(timeout=15) == "charged"
        assert outcomes.for_id(result.id)[-1].outcome is Outcome.SUCCEEDED
        assert ran == ["o-2"]
        # One line when it went, one when it came back (before the claim that ran).
        assert store_lines(caplog) == ["unavailable", "again"]
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_dead_letters_logged_while_the_store_was_down_are_imported(
    make_app: Any, outcomes: Any, caplog: Any, tmp_path: Path
) -> None:
    """The store is down when a job is discarded: its dead letter is logged whole. The
    store comes back; ``reliable dead import`` reads the worker's log into it, once."""
    missing = tmp_path / "store"
    url = f"sqlite:///{missing}/store.sqlite3"
    app = make_app("store-import", reliable_database_url=url)

    @app.task(base=ReliableTask, shared=False, name="down.parse")
    def parse(row: str) -> None:
        raise Discard(f"row {row} is garbage")

    caplog.set_level(logging.ERROR, logger="celery_reliable.dead_letters")
    with embedded_worker(app):
        result = parse.apply_async(("r-7",))
        assert wait_for_outcome(result, timeout=10) == "DISCARDED"
        outcomes.wait_for(result.id)
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.dead_letters"]
    log = tmp_path / "worker.log"
    # As a worker's log file holds it: a formatter's prefix, other lines around it.
    log.write_text(
        "[2026-12-06 10:00:00,000: INFO/MainProcess] celery@host ready.\n"
        f"[2026-12-06 10:00:01,000: ERROR/ForkPoolWorker-1] {logged}\n"
        "[2026-12-06 10:00:02,000: INFO/MainProcess] Task down.parse[x] received\n"
    )
    missing.mkdir()  # the store is back
    broker = app.conf.broker_url

    done = cli(broker, url, "dead", "import", str(log))
    assert done.returncode == 0, done.stderr
    assert "1 dead letters imported (id 1), 0 already stored, 0 lines not understood" in (
        done.stdout
    )
    shown = cli(broker, url, "dead", "show", "1", "--json")
    letter = json.loads(shown.stdout)
    assert letter["task_id"] == result.id and letter["task_name"] == "down.parse"
    assert letter["args"] == ["r-7"] and letter["outcome"] == "discarded"
    assert letter["reason"] == "row r-7 is garbage"

    again = cli(broker, url, "dead", "import", str(log))
    assert again.returncode == 0, again.stderr
    assert "0 dead letters imported, 1 already stored" in again.stdout

    broken = tmp_path / "broken.log"
    broken.write_text(logged[: logged.index(LOGGED_MARKER) + len(LOGGED_MARKER) + 20] + "\n")
    bad = cli(broker, url, "dead", "import", str(broken))
    assert bad.returncode == 1
    assert f"not imported: {broken}:1: not JSON" in bad.stderr


def test_a_batch_member_that_ends_while_postgresql_is_stopped_is_counted_once_it_is_back(
    make_app: Any, outcomes: Any, caplog: Any
) -> None:
    """A PostgreSQL server of its own, stopped while the batch's last member runs, and
    started again: the ending waited in the broker's Redis, and the batch completes once."""
    server = PostgresServer()
    server.start()
    try:
        app = make_app("store-down-batch", reliable_database_url=server.url)
        effects = redis.Redis.from_url(app.conf.broker_url)

        @app.task(base=ReliableTask, shared=False, name="down.row", timeout=30)
        def row(key: str) -> str:
            effects.incr(f"runs:{key}")
            wait_until(lambda: effects.exists(f"release:{key}"), "the release", timeout=25)
            return key

        @app.task(base=ReliableTask, shared=False, name="down.summary", timeout=30)
        def summary(got: dict[str, Any]) -> None:
            effects.rpush("summaries", json.dumps(got))

        store = store_for(app)
        assert store is not None
        migrate.upgrade(store.engine)
        caplog.set_level(logging.WARNING, logger="celery_reliable.batches")
        with embedded_worker(app):
            with Batch(on_complete=summary.s()) as batch:
                held = row.delay("held")
            wait_until(lambda: effects.get("runs:held"), "the member running")
            server.stop()
            effects.set("release:held", 1)
            outcomes.wait_for(held.id)
            wait_until(
                lambda: (
                    held.id in held_endings(app)
                    and any("not counted yet" in r.getMessage() for r in caplog.records)
                ),
                "the ending held in the broker's Redis by a counter that could not count it",
            )
            server.start()
            [got] = wait_until(
                lambda: effects.lrange("summaries", 0, -1), "the batch's callback", timeout=60
            )
            settle(app, longest_wait=1.0)
        assert json.loads(got)["batch"] == batch.id
        assert json.loads(got)["total"] == 1 and json.loads(got)["outcomes"]["succeeded"] == 1
        assert effects.llen("summaries") == 1 and int(effects.get("runs:held") or 0) == 1
        said = [r.getMessage() for r in caplog.records if "not counted yet" in r.getMessage()]
        assert said and all("they wait in the broker's Redis" in line for line in said)
        assert held_endings(app) == []
        stored = store.batches.get(batch.id)
        assert stored is not None and (stored.state, stored.done, stored.total) == (
            "completed",
            1,
            1,
        )
        store.engine.dispose()
    finally:
        server.remove()
