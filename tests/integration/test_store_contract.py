"""The store's contract, on both databases it supports: every test runs once against a
temporary SQLite file and once against a fresh database on a real PostgreSQL server.

Covers the Alembic migrations, idempotency receipts (claim, lease takeover, complete,
complete_in, hold_in, release, prune), unique-enqueue locks, steps, dead letters (including a real
re-publish through Redis to a real worker), races between real threads, and a store
that cannot be reached.

The apps here come from :func:`contract_app`, not ``make_app``: only the dead-letter
retry test talks to the broker, and ``make_app`` hands every app a Redis database of
its own out of the server's 64, which some seventy store-only apps would use up for
the modules that run after this one.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from celery import Celery

from celery_reliable.errors import DeadLetterError, LeaseLost, StoreUnavailable
from celery_reliable.store import Claim, Receipt, Store, migrate, store_for
from celery_reliable.store.dead_letters import MAX_TRACEBACK
from celery_reliable.store.engine import create_store_engine
from celery_reliable.store.receipts import RESULT_PENDING, renew_in
from celery_reliable.store.schema import (
    VERSION_TABLE,
    dead_letters,
    metadata,
    receipts,
    unique_locks,
)
from celery_reliable.store.schema import progress as progress_table
from celery_reliable.store.schema import steps as steps_table
from celery_reliable.store.timeutil import utcnow
from tests.helpers import dead_letter_fields as letter
from tests.support.celery_apps import fresh_postgres_database
from tests.support.servers import free_port
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration

TABLES = {
    "reliable_receipts",
    "reliable_dead_letters",
    "reliable_unique_locks",
    "reliable_outcome_history",
    "reliable_progress",
    "reliable_steps",
    "reliable_cancels",
    "reliable_pauses",
    "reliable_outbox",
    "reliable_beat_runs",
}
TASK = "contract.task"
H1 = "a" * 64
H2 = "b" * 64

# A table of the test's own, in the store's database, for complete_in().
test_metadata = sa.MetaData()
effects = sa.Table(
    "contract_effects",
    test_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("note", sa.String(64), nullable=False),
)


# --------------------------------------------------------------------------- helpers


def contract_app(url: str) -> Celery:
    """An app whose only job is to carry ``reliable_database_url`` (no broker used)."""
    app = Celery("contract", set_as_current=False)
    app.conf.update(reliable_database_url=url)
    return app


def new_store(url: str) -> Store:
    store = store_for(contract_app(url))
    assert store is not None
    return store


@pytest.fixture
def fresh(store_url: str) -> Iterator[Store]:
    """A store on an empty database: no schema yet."""
    store = new_store(store_url)
    try:
        yield store
    finally:
        store.dispose()


@pytest.fixture
def store(fresh: Store) -> Store:
    """A store on a database upgraded to head."""
    migrate.upgrade(fresh.engine)
    return fresh


def key() -> str:
    return uuid.uuid4().hex


def tid() -> str:
    return uuid.uuid4().hex


def execute(store: Store, statement: Any) -> None:
    with store.engine.begin() as connection:
        connection.execute(statement)


def claim(store: Store, k: str, **kw: Any) -> Claim | Receipt:
    args: dict[str, Any] = {
        "task_name": TASK,
        "key": k,
        "payload_hash": H1,
        "task_id": tid(),
        "lease_seconds": 30,
    }
    args.update(kw)
    return store.receipts.claim(**args)


def own(result: Claim | Receipt) -> Claim:
    assert isinstance(result, Claim), f"expected a Claim, got {result!r}"
    return result


def refused(result: Claim | Receipt) -> Receipt:
    assert isinstance(result, Receipt), f"expected a Receipt, got {result!r}"
    return result


def race(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run ``fn(0..n-1)`` in ``n`` real threads released together by a barrier."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=15)
            results[i] = fn(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    assert not errors, f"racing threads raised: {errors!r}"
    return results


# -------------------------------------------------------------------------- migrations


def test_upgrade_from_empty_database_to_head(fresh: Store) -> None:
    engine = fresh.engine
    head = migrate.head()
    assert migrate.current(engine) is None
    assert not TABLES & set(sa.inspect(engine).get_table_names())

    assert migrate.upgrade(engine) == (None, head)
    assert migrate.current(engine) == head
    assert migrate.upgrade(engine) == (head, head)

    names = set(sa.inspect(engine).get_table_names())
    assert TABLES | {VERSION_TABLE} <= names
    # Our version table only: never Alembic's default one, the application's own.
    assert "alembic_version" not in names


def test_alembic_is_quiet_unless_asked(fresh: Store, caplog: pytest.LogCaptureFixture) -> None:
    """A worker checks the schema at start and in every pool child: Alembic's INFO
    lines ("Context impl SQLiteImpl.") are not printed, unless the user set a level
    on the ``alembic`` logger."""
    with caplog.at_level(logging.INFO):
        migrate.upgrade(fresh.engine)
        migrate.current(fresh.engine)
    assert [r for r in caplog.records if r.name.startswith("alembic")] == []
    assert logging.getLogger("alembic").level == logging.NOTSET
    caplog.clear()
    alembic_log = logging.getLogger("alembic")
    alembic_log.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.INFO):
            migrate.current(fresh.engine)
    finally:
        alembic_log.setLevel(logging.NOTSET)
    assert any(r.name.startswith("alembic") for r in caplog.records)


def test_migrations_create_what_schema_py_queries(store: Store) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        differences = compare_metadata(context, metadata)
    assert differences == []
    inspector = sa.inspect(store.engine)
    for table in (receipts, dead_letters, unique_locks):
        indexes = {index["name"] for index in inspector.get_indexes(table.name)}
        assert {index.name for index in table.indexes} <= indexes


UPGRADE_PROCESS = """
import sys
from celery_reliable.store import migrate
from celery_reliable.store.engine import create_store_engine

engine = create_store_engine(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
try:
    print(repr(migrate.upgrade(engine)), flush=True)
except Exception as exc:
    print(f"error {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
"""


def test_concurrent_upgrades_of_an_empty_database(fresh: Store, store_url: str) -> None:
    """migrate.upgrade() says it is safe to run concurrently: several deploys (separate
    processes; Alembic's global context is not thread-safe) upgrading at the same time."""
    if fresh.dialect == "sqlite":
        # Start from a WAL database: the race of the WAL switch itself is
        # test_first_use_waits_for_a_busy_database's business.
        database = sa.make_url(store_url).database
        assert database is not None
        with contextlib.closing(sqlite3.connect(database)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE_PROCESS, store_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            assert process.stdout.readline().strip() == "ready"
        for process in processes:  # go, all at once
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60)[0].strip() for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    head = migrate.head()
    assert Counter(outputs) == {repr((None, head)): 1, repr((head, head)): 3}
    assert migrate.current(fresh.engine) == head


def test_first_use_waits_for_a_busy_database(fresh: Store, store_url: str) -> None:
    """Another writer holds the database (the application's own code on the same SQLite
    file, or a lock on PostgreSQL): the store's first claim waits its turn, then works."""
    if fresh.dialect == "sqlite":
        database = sa.make_url(store_url).database
        assert database is not None
        holder: Any = sqlite3.connect(database, isolation_level=None)
        holder.execute("CREATE TABLE app_orders (id INTEGER PRIMARY KEY)")
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO app_orders (id) VALUES (1)")
        release, close = (lambda: holder.execute("COMMIT")), holder.close
    else:
        migrate.upgrade(fresh.engine)
        other = create_store_engine(store_url)
        holder = other.connect()
        holder.begin()
        holder.execute(sa.text("LOCK TABLE reliable_receipts IN ACCESS EXCLUSIVE MODE"))
        release, close = holder.commit, other.dispose
    outcome: list[Any] = []
    claimer = threading.Thread(
        target=lambda: outcome.append(_attempt(lambda: claim(fresh, key()))), daemon=True
    )
    try:
        claimer.start()
        claimer.join(timeout=1.0)
        assert claimer.is_alive(), f"did not wait for the writer: {outcome!r}"
        release()
        claimer.join(timeout=20)
        assert not claimer.is_alive()
    finally:
        close()
    assert len(outcome) == 1
    own(outcome[0])


def _attempt(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:
        return exc


def test_schema_on_first_use(fresh: Store) -> None:
    """SQLite applies the migrations itself; PostgreSQL asks for `reliable db upgrade`."""
    head = migrate.head()
    if fresh.dialect == "sqlite":
        fresh.ensure_schema()
        assert migrate.current(fresh.engine) == head
        assert set(sa.inspect(fresh.engine).get_table_names()) >= TABLES
        own(claim(fresh, key()))
        return

    for touch in (
        lambda: fresh.receipts,
        lambda: fresh.dead_letters,
        lambda: fresh.unique,
        lambda: fresh.session().__enter__(),
    ):
        with pytest.raises(StoreUnavailable, match="reliable db upgrade"):
            touch()
    assert migrate.current(fresh.engine) is None  # the check changed nothing
    # A failed check is not remembered: after the upgrade the same store works.
    migrate.upgrade(fresh.engine)
    own(claim(fresh, key()))


# ---------------------------------------------------------------------------- receipts


def test_first_claim_owns_the_key(store: Store) -> None:
    k, task_id = key(), tid()
    before = utcnow()
    first = own(claim(store, k, task_id=task_id, lease_seconds=30))
    assert (first.task_name, first.key, first.task_id) == (TASK, k, task_id)
    assert first.claims == 1
    assert not first.took_over
    assert not first.completed
    assert before + timedelta(seconds=30) <= first.lease_expires_at
    assert first.lease_expires_at <= utcnow() + timedelta(seconds=30)

    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert stored.state == "in_progress"
    assert stored.payload_hash == H1
    assert stored.task_id == task_id
    assert stored.claims == 1
    assert stored.lease_expires_at == first.lease_expires_at
    assert stored.result is None
    assert stored.completed_at is None
    assert stored.lease_live(utcnow())


def test_second_claim_while_lease_is_live_gets_the_receipt(store: Store) -> None:
    k, holder = key(), tid()
    first = own(claim(store, k, task_id=holder))
    second = refused(claim(store, k))
    assert second.state == "in_progress"
    assert second.task_id == holder
    assert second.claims == 1
    assert second.lease_expires_at == first.lease_expires_at
    assert second.lease_live(utcnow())


def test_completed_claim_answers_later_claims_with_the_result(store: Store) -> None:
    k, task_id = key(), tid()
    first = own(claim(store, k, task_id=task_id))
    assert store.receipts.complete(first, '"json"') is True
    assert first.completed

    later = refused(claim(store, k))
    assert later.state == "succeeded"
    assert later.result == '"json"'
    assert later.task_id == task_id
    assert later.completed_at is not None
    assert later.lease_expires_at is None
    assert not later.lease_live(utcnow())
    # A succeeded receipt is never taken over, however late the claim.
    much_later = refused(claim(store, k, now=utcnow() + timedelta(days=30)))
    assert much_later.state == "succeeded"
    assert much_later.claims == 1
    # Completing twice does nothing.
    assert store.receipts.complete(first, '"other"') is False
    assert refused(claim(store, k)).result == '"json"'


def test_claim_with_another_payload_gets_the_receipt(store: Store) -> None:
    k = key()
    t0 = utcnow()
    first = own(claim(store, k, payload_hash=H1, lease_seconds=10, now=t0))

    live = refused(claim(store, k, payload_hash=H2, now=t0 + timedelta(seconds=1)))
    assert live.payload_hash == H1 != H2
    assert live.state == "in_progress"
    # Nor is an expired claim taken over by a different payload.
    expired = refused(claim(store, k, payload_hash=H2, now=t0 + timedelta(seconds=60)))
    assert expired.payload_hash == H1
    assert expired.claims == 1

    store.receipts.complete(first, "1")
    done = refused(claim(store, k, payload_hash=H2))
    assert (done.state, done.payload_hash, done.result) == ("succeeded", H1, "1")


def test_same_key_under_another_task_is_independent(store: Store) -> None:
    k = key()
    a = own(claim(store, k, task_name="contract.a"))
    b = own(claim(store, k, task_name="contract.b", payload_hash=H2))
    assert a.claims == b.claims == 1
    store.receipts.complete(a, '"a"')
    assert refused(claim(store, k, task_name="contract.a")).state == "succeeded"
    b_receipt = refused(claim(store, k, task_name="contract.b", payload_hash=H2))
    assert b_receipt.state == "in_progress"
    assert b_receipt.payload_hash == H2
    store.receipts.release(b)
    assert store.receipts.get("contract.b", k) is None
    assert store.receipts.get("contract.a", k) is not None


def test_expired_lease_is_taken_over(store: Store) -> None:
    k, first_id, second_id = key(), tid(), tid()
    t0 = utcnow()
    first = own(claim(store, k, task_id=first_id, lease_seconds=10, now=t0))
    # Still live one second before it ends.
    refused(claim(store, k, now=t0 + timedelta(seconds=9)))

    second = own(
        claim(store, k, task_id=second_id, lease_seconds=10, now=t0 + timedelta(seconds=11))
    )
    assert second.claims == 2
    assert second.took_over
    assert second.token != first.token
    assert second.lease_expires_at == t0 + timedelta(seconds=21)

    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert (stored.state, stored.task_id, stored.claims) == ("in_progress", second_id, 2)
    assert stored.created_at == t0  # takeover keeps the row's history
    assert stored.lease_expires_at == second.lease_expires_at

    # The first execution lost its token: it can neither complete nor release.
    assert store.receipts.complete(first, '"late"') is False
    assert not first.completed
    store.receipts.release(first)
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert (stored.state, stored.task_id, stored.result) == ("in_progress", second_id, None)

    assert store.receipts.complete(second, '"second"') is True
    final = refused(claim(store, k))
    assert (final.state, final.result, final.claims) == ("succeeded", '"second"', 2)


def test_release_gives_the_key_back(store: Store) -> None:
    k = key()
    first = own(claim(store, k))
    store.receipts.release(first)
    assert store.receipts.get(TASK, k) is None
    again = own(claim(store, k, payload_hash=H2))
    assert again.claims == 1
    assert again.token != first.token
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert stored.payload_hash == H2


def test_release_after_complete_keeps_the_receipt(store: Store) -> None:
    k = key()
    first = own(claim(store, k))
    store.receipts.complete(first, "42")
    store.receipts.release(first)
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert (stored.state, stored.result) == ("succeeded", "42")


def test_complete_in_commits_with_the_callers_writes(store: Store) -> None:
    test_metadata.create_all(store.engine)
    k = key()
    mine = own(claim(store, k))
    with store.session() as session:
        session.execute(effects.insert().values(note=k))
        store.receipts.complete_in(session, mine)
        if store.dialect == "postgresql":
            # Not visible outside the transaction before it commits. (On SQLite every
            # transaction starts with BEGIN IMMEDIATE, so a reader would wait here.)
            outside = store.receipts.get(TASK, k)
            assert outside is not None
            assert outside.state == "in_progress"
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert stored.state == "succeeded"
    # The body has not returned: its result is pending, and the lease stays.
    assert stored.result == RESULT_PENDING
    assert stored.result_pending
    assert stored.lease_expires_at == mine.lease_expires_at
    assert stored.completed_at is not None
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(effects.c.note)).scalars().all() == [k]

    # The value the body returned is recorded afterwards, and the lease ends.
    store.receipts.store_result(mine, '{"ok": true}')
    after = refused(claim(store, k))
    assert (after.result, after.lease_expires_at) == ('{"ok": true}', None)
    assert not after.result_pending


def test_a_pending_result_keeps_its_lease_renewed_until_stored(store: Store) -> None:
    """Between atomic() and the body's return a heartbeat still renews the lease; a
    body that returned None stores no result in place of the pending mark."""
    k = key()
    mine = own(claim(store, k))
    with store.session() as session:
        store.receipts.complete_in(session, mine)
    with store.engine.begin() as connection:
        assert renew_in(connection, mine, 600, utcnow())
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert stored.result_pending
    assert stored.lease_expires_at == mine.lease_expires_at
    assert stored.lease_live(utcnow() + timedelta(seconds=500))
    store.receipts.store_result(mine, None)
    done = store.receipts.get(TASK, k)
    assert done is not None
    assert (done.state, done.result, done.lease_expires_at) == ("succeeded", None, None)
    with store.engine.begin() as connection:
        assert not renew_in(connection, mine, 600, utcnow()), "a final receipt is not renewed"


def test_complete_in_after_takeover_raises_lease_lost_and_rolls_back(store: Store) -> None:
    test_metadata.create_all(store.engine)
    k, second_id = key(), tid()
    t0 = utcnow()
    first = own(claim(store, k, lease_seconds=10, now=t0))
    second = own(
        claim(store, k, task_id=second_id, lease_seconds=10, now=t0 + timedelta(seconds=11))
    )
    assert second.claims == 2

    with pytest.raises(LeaseLost), store.session() as session:
        session.execute(effects.insert().values(note=k))
        store.receipts.complete_in(session, first)
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(effects.c.note)).scalars().all() == []
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert (stored.state, stored.task_id) == ("in_progress", second_id)


def test_complete_in_rolls_back_with_the_callers_error(store: Store) -> None:
    test_metadata.create_all(store.engine)
    k = key()
    mine = own(claim(store, k))
    with pytest.raises(ZeroDivisionError), store.session() as session:
        session.execute(effects.insert().values(note=k))
        store.receipts.complete_in(session, mine)
        _ = 1 / 0
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert stored.state == "in_progress"
    with store.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(effects)).scalar() == 0
    # The claim is still ours: it can be completed or released afterwards.
    assert store.receipts.complete(mine, "1") is True


def test_prune_receipts(store: Store) -> None:
    now = utcnow()
    ttl = 3600.0
    old_done, new_done, abandoned, recently_abandoned, live = (key() for _ in range(5))

    for k in (old_done, new_done):
        store.receipts.complete(own(claim(store, k)), "1")
    # Completed two hours ago: older than the TTL.
    execute(
        store,
        sa.update(receipts)
        .where(receipts.c.key == old_done)
        .values(completed_at=now - timedelta(hours=2), created_at=now - timedelta(hours=2)),
    )
    # In progress, lease ended two hours ago / ten minutes ago.
    own(claim(store, abandoned, lease_seconds=60, now=now - timedelta(hours=2)))
    own(claim(store, recently_abandoned, lease_seconds=60, now=now - timedelta(minutes=11)))
    own(claim(store, live, lease_seconds=60, now=now))

    assert store.receipts.prune(ttl, now=now) == 2
    assert store.receipts.get(TASK, old_done) is None
    assert store.receipts.get(TASK, abandoned) is None
    for k in (new_done, recently_abandoned, live):
        assert store.receipts.get(TASK, k) is not None, k
    assert store.receipts.prune(ttl, now=now) == 0
    # Later, everything has aged past the TTL except the receipts still unexpired.
    assert store.receipts.prune(ttl, now=now + timedelta(hours=3)) == 3


def test_list_receipts(store: Store) -> None:
    a, b = key(), key()
    store.receipts.complete(own(claim(store, a)), "1")
    own(claim(store, b))
    own(claim(store, key(), task_name="contract.other"))
    assert {r.key for r in store.receipts.list(task_name=TASK)} == {a, b}
    assert [r.key for r in store.receipts.list(task_name=TASK, state="succeeded")] == [a]
    assert [r.key for r in store.receipts.list(task_name=TASK, state="in_progress")] == [b]
    assert len(store.receipts.list(limit=2)) == 2
    assert len(store.receipts.list()) == 3


def test_keys_as_wide_as_the_columns(store: Store) -> None:
    """Callers shorten keys to 255 characters (idempotency.shorten); that many
    characters, non-ASCII ones too, fit on both databases."""
    wide_key = "é" * 255
    wide_task = "t" * 255
    mine = own(claim(store, wide_key, task_name=wide_task))
    assert store.receipts.complete(mine, '"ü"') is True
    again = refused(claim(store, wide_key, task_name=wide_task))
    assert (again.key, again.task_name, again.result) == (wide_key, wide_task, '"ü"')
    holder = tid()
    assert store.unique.acquire(wide_task, wide_key, holder, period=60) == holder
    assert store.unique.holder(wide_task, wide_key) == holder


# ---------------------------------------------------------------------------- races


def test_racing_first_claims_have_one_winner(store: Store) -> None:
    k = key()
    ids = [tid() for _ in range(8)]
    results = race(8, lambda i: store.receipts.claim(TASK, k, H1, ids[i], 30))
    winners = [r for r in results if isinstance(r, Claim)]
    assert len(winners) == 1
    assert winners[0].claims == 1
    losers = [r for r in results if isinstance(r, Receipt)]
    assert len(losers) == 7
    assert {r.task_id for r in losers} == {winners[0].task_id}
    assert all(r.state == "in_progress" for r in losers)
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert (stored.task_id, stored.claims) == (winners[0].task_id, 1)


def test_racing_takeovers_have_one_winner(store: Store) -> None:
    k = key()
    t0 = utcnow()
    own(claim(store, k, lease_seconds=10, now=t0))
    later = t0 + timedelta(seconds=11)
    ids = [tid() for _ in range(8)]
    results = race(8, lambda i: store.receipts.claim(TASK, k, H1, ids[i], 10, now=later))
    winners = [r for r in results if isinstance(r, Claim)]
    assert len(winners) == 1
    assert winners[0].claims == 2
    assert winners[0].task_id in ids
    losers = [r for r in results if isinstance(r, Receipt)]
    assert len(losers) == 7
    assert all((r.task_id, r.claims) == (winners[0].task_id, 2) for r in losers)
    stored = store.receipts.get(TASK, k)
    assert stored is not None
    assert (stored.task_id, stored.claims) == (winners[0].task_id, 2)


def test_racing_unique_acquires_agree_on_one_holder(store: Store) -> None:
    k = key()
    ids = [tid() for _ in range(20)]
    results = race(20, lambda i: store.unique.acquire(TASK, k, ids[i], period=60))
    assert len(set(results)) == 1
    assert results[0] in ids
    assert store.unique.holder(TASK, k) == results[0]


# ----------------------------------------------------------------------- unique locks


def test_unique_lock_is_held_for_its_period(store: Store) -> None:
    k, a, b = key(), tid(), tid()
    t0 = utcnow()
    assert store.unique.holder(TASK, k) is None
    assert store.unique.acquire(TASK, k, a, period=60, now=t0) == a
    assert store.unique.holder(TASK, k) == a
    assert store.unique.acquire(TASK, k, b, period=60, now=t0 + timedelta(seconds=59)) == a
    assert store.unique.holder(TASK, k, now=t0 + timedelta(seconds=59)) == a
    # Another task name, or another key, is another lock.
    assert store.unique.acquire("contract.other", k, b, period=60, now=t0) == b
    assert store.unique.acquire(TASK, key(), b, period=60, now=t0) == b


def test_unique_lock_expires_and_is_taken(store: Store) -> None:
    k, a, b = key(), tid(), tid()
    t0 = utcnow()
    store.unique.acquire(TASK, k, a, period=60, now=t0)
    assert store.unique.holder(TASK, k, now=t0 + timedelta(seconds=60)) is None
    assert store.unique.acquire(TASK, k, b, period=60, now=t0 + timedelta(seconds=61)) == b
    assert store.unique.holder(TASK, k, now=t0 + timedelta(seconds=61)) == b
    # The old holder is now refused.
    assert store.unique.acquire(TASK, k, a, period=60, now=t0 + timedelta(seconds=62)) == b


def test_unique_lock_reacquired_by_its_holder(store: Store) -> None:
    k, a, b = key(), tid(), tid()
    t0 = utcnow()
    store.unique.acquire(TASK, k, a, period=60, now=t0)
    # A re-publish of the same task id keeps the lock, and renews its period.
    assert store.unique.acquire(TASK, k, a, period=60, now=t0 + timedelta(seconds=30)) == a
    assert store.unique.holder(TASK, k, now=t0 + timedelta(seconds=80)) == a
    assert store.unique.acquire(TASK, k, b, period=60, now=t0 + timedelta(seconds=80)) == a


def test_unique_lock_released_only_by_its_holder(store: Store) -> None:
    k, a, b = key(), tid(), tid()
    store.unique.acquire(TASK, k, a, period=60)
    store.unique.release(TASK, k, b)
    assert store.unique.holder(TASK, k) == a
    assert store.unique.acquire(TASK, k, b, period=60) == a
    store.unique.release(TASK, k, a)
    assert store.unique.holder(TASK, k) is None
    assert store.unique.acquire(TASK, k, b, period=60) == b


def test_unique_prune_deletes_expired_locks_only(store: Store) -> None:
    t0 = utcnow()
    expired, live = key(), key()
    store.unique.acquire(TASK, expired, tid(), period=10, now=t0 - timedelta(seconds=60))
    holder = tid()
    store.unique.acquire(TASK, live, holder, period=60, now=t0)
    assert store.unique.prune(now=t0) == 1
    assert store.unique.holder(TASK, live, now=t0) == holder
    with store.engine.connect() as connection:
        keys = connection.execute(sa.select(unique_locks.c.key)).scalars().all()
    assert keys == [live]
    assert store.unique.prune(now=t0) == 0
    assert store.unique.prune(now=t0 + timedelta(seconds=60)) == 1


# ------------------------------------------------------------------------ dead letters


def test_dead_letter_write_then_get(store: Store) -> None:
    row = letter(
        outcome="exhausted",
        attempts=5,
        options={"exchange": "", "routing_key": "celery", "priority": 3, "headers": {"h": 1}},
    )
    before = utcnow()
    dead_id = store.dead_letters.write(**row)
    assert isinstance(dead_id, int)
    got = store.dead_letters.get(dead_id)
    assert got is not None
    assert got.id == dead_id
    assert (got.task_id, got.task_name, got.queue) == (row["task_id"], row["task_name"], "celery")
    assert got.args == [1, "two"]
    assert got.kwargs == {"three": 3}
    assert got.options == row["options"]
    assert got.redacted is False
    assert (got.outcome, got.attempts, got.reason) == ("exhausted", 5, "unclassified error")
    assert (got.exc_type, got.exc_message) == ("builtins.ValueError", "boom")
    assert got.traceback == row["traceback"]
    assert before <= got.created_at <= utcnow()
    assert got.retried_at is None
    assert got.retried_task_id is None
    assert got.retryable
    assert store.dead_letters.get(dead_id + 1000) is None


def test_dead_letter_list_and_count(store: Store) -> None:
    ids = [
        store.dead_letters.write(**letter(task_name="contract.a", outcome="failed")),
        store.dead_letters.write(**letter(task_name="contract.b", outcome="discarded")),
        store.dead_letters.write(**letter(task_name="contract.a", outcome="exhausted")),
        store.dead_letters.write(**letter(task_name="contract.a", outcome="failed")),
        store.dead_letters.write(**letter(task_name="contract.b", outcome="failed")),
    ]
    newest_first = list(reversed(ids))
    assert [d.id for d in store.dead_letters.list()] == newest_first
    assert [d.id for d in store.dead_letters.list(task_name="contract.a")] == [
        ids[3],
        ids[2],
        ids[0],
    ]
    assert [d.id for d in store.dead_letters.list(outcome="failed")] == [ids[4], ids[3], ids[0]]
    assert [d.id for d in store.dead_letters.list(task_name="contract.b", outcome="failed")] == [
        ids[4]
    ]
    assert [d.id for d in store.dead_letters.list(limit=2)] == newest_first[:2]
    assert [d.id for d in store.dead_letters.list(limit=2, offset=2)] == newest_first[2:4]
    assert [d.id for d in store.dead_letters.list(limit=2, offset=4)] == newest_first[4:]
    assert store.dead_letters.list(offset=5) == []

    execute(
        store,
        sa.update(dead_letters)
        .where(dead_letters.c.id == ids[3])
        .values(retried_at=utcnow(), retried_task_id=tid()),
    )
    assert ids[3] in [d.id for d in store.dead_letters.list()]
    assert [d.id for d in store.dead_letters.list(include_retried=False)] == [
        ids[4],
        ids[2],
        ids[1],
        ids[0],
    ]

    assert store.dead_letters.count() == 5
    assert store.dead_letters.count(task_name="contract.a") == 3
    assert store.dead_letters.count(task_name="contract.b") == 2
    assert store.dead_letters.count(task_name="contract.none") == 0


def test_dead_letter_arguments_round_trip_as_celery_json(store: Store) -> None:
    when = datetime(2024, 2, 29, 23, 59, 58, 123456)
    ident = uuid.uuid4()
    amount = Decimal("19.90")
    dead_id = store.dead_letters.write(
        **letter(
            args=[when, ident, amount, {"nested": [amount]}],
            kwargs={"when": when, "id": ident, "amount": amount},
        )
    )
    got = store.dead_letters.get(dead_id)
    assert got is not None
    assert got.args == [when, ident, amount, {"nested": [amount]}]
    assert isinstance(got.args[0], datetime)
    assert isinstance(got.args[1], uuid.UUID)
    assert isinstance(got.args[2], Decimal)
    assert str(got.args[2]) == "19.90"
    assert got.kwargs == {"when": when, "id": ident, "amount": amount}
    assert got.retryable


def test_dead_letter_with_arguments_json_cannot_hold(store: Store) -> None:
    thing = object()
    dead_id = store.dead_letters.write(**letter(args=[1, thing], kwargs={"x": thing}))
    got = store.dead_letters.get(dead_id)
    assert got is not None
    assert not got.retryable
    assert got.options.get("args_unserializable") is True
    with store.engine.connect() as connection:
        raw = connection.execute(
            sa.select(dead_letters.c.args, dead_letters.c.kwargs).where(
                dead_letters.c.id == dead_id
            )
        ).one()
    assert repr(thing) in raw.args
    assert repr(thing) in raw.kwargs
    with pytest.raises(DeadLetterError, match="JSON"):
        store.dead_letters.retry(dead_id)
    got = store.dead_letters.get(dead_id)
    assert got is not None
    assert got.retried_at is None


def test_redacted_dead_letter_keeps_no_arguments(store: Store) -> None:
    dead_id = store.dead_letters.write(
        **letter(args=["4111-1111-1111-1111"], kwargs={"cvv": "123"}, redact=True)
    )
    got = store.dead_letters.get(dead_id)
    assert got is not None
    assert got.redacted is True
    assert got.args is None
    assert got.kwargs is None
    assert not got.retryable
    with store.engine.connect() as connection:
        raw = connection.execute(sa.select(dead_letters).where(dead_letters.c.id == dead_id)).one()
    assert raw.args is None
    assert raw.kwargs is None
    assert "4111" not in str(tuple(raw))
    with pytest.raises(DeadLetterError, match="redacted"):
        store.dead_letters.retry(dead_id)
    got = store.dead_letters.get(dead_id)
    assert got is not None
    assert got.retried_at is None


def test_long_traceback_is_truncated_keeping_the_end(store: Store) -> None:
    end = "\nValueError: the line that matters\n"
    long_tb = "Traceback (most recent call last):\n" + "  frame\n" * 20_000 + end
    assert len(long_tb) > MAX_TRACEBACK
    dead_id = store.dead_letters.write(**letter(traceback=long_tb))
    got = store.dead_letters.get(dead_id)
    assert got is not None
    assert got.traceback is not None
    assert got.traceback.endswith(end)
    assert got.traceback.endswith(long_tb[-MAX_TRACEBACK:])
    assert MAX_TRACEBACK < len(got.traceback) <= MAX_TRACEBACK + 64
    assert "truncated" in got.traceback[:64]

    # Exactly at the limit: kept whole.
    exact = "x" * (MAX_TRACEBACK - len(end)) + end
    got = store.dead_letters.get(store.dead_letters.write(**letter(traceback=exact)))
    assert got is not None
    assert got.traceback == exact


def test_purge_dead_letters(store: Store) -> None:
    def write(**fields: Any) -> int:
        return store.dead_letters.write(**letter(**fields))

    a1, a2, a3 = (write(task_name="contract.a") for _ in range(3))
    b1, b2, b3 = (write(task_name="contract.b") for _ in range(3))
    c1, c2 = (write(task_name="contract.c") for _ in range(2))
    old = utcnow() - timedelta(days=10)
    execute(
        store,
        sa.update(dead_letters).where(dead_letters.c.id.in_([a1, b1])).values(created_at=old),
    )
    execute(
        store,
        sa.update(dead_letters)
        .where(dead_letters.c.id.in_([a2, c1]))
        .values(retried_at=utcnow(), retried_task_id=tid()),
    )

    assert store.dead_letters.purge(ids=[]) == 0
    assert store.dead_letters.purge(ids=[b2, b3 + 1000]) == 1
    assert store.dead_letters.purge(older_than=timedelta(days=1), task_name="contract.b") == 1
    assert store.dead_letters.purge(older_than=timedelta(days=1)) == 1  # a1
    assert store.dead_letters.purge(retried_only=True, task_name="contract.c") == 1  # c1
    assert store.dead_letters.purge(retried_only=True) == 1  # a2
    assert store.dead_letters.purge(task_name="contract.c") == 1
    assert store.dead_letters.get(c2) is None
    remaining = {d.id for d in store.dead_letters.list()}
    assert remaining == {a3, b3}
    assert store.dead_letters.purge(ids=(i for i in [a3])) == 1
    assert store.dead_letters.purge() == 1
    assert store.dead_letters.count() == 0


def test_retry_publishes_the_job_again(store_url: str, make_app: Any) -> None:
    app = make_app("contract", reliable_database_url=store_url)

    @app.task(name="contract.echo", shared=False)
    def echo(*args: Any, **kwargs: Any) -> list[Any]:
        return [list(args), kwargs]

    store = store_for(app)
    assert store is not None
    try:
        migrate.upgrade(store.engine)
        dead_id = store.dead_letters.write(
            **letter(
                task_name="contract.echo",
                queue="celery",
                args=[1, "two"],
                kwargs={"three": 3},
                options={"exchange": "", "routing_key": "celery"},
            )
        )
        with pytest.raises(DeadLetterError, match="no dead letter"):
            store.dead_letters.retry(dead_id + 1000)

        result = store.dead_letters.retry(dead_id)
        with embedded_worker(app):
            assert result.get(timeout=10) == [[1, "two"], {"three": 3}]

            got = store.dead_letters.get(dead_id)
            assert got is not None
            assert got.retried_at is not None
            assert got.retried_task_id == result.id
            assert store.dead_letters.list(include_retried=False) == []

            with pytest.raises(DeadLetterError, match="already retried"):
                store.dead_letters.retry(dead_id)
            again = store.dead_letters.retry(dead_id, force=True)
            assert again.id != result.id
            assert again.get(timeout=10) == [[1, "two"], {"three": 3}]
        got = store.dead_letters.get(dead_id)
        assert got is not None
        assert got.retried_task_id == again.id
        assert store.dead_letters.count() == 1
    finally:
        store.dispose()


def test_a_retried_job_carries_its_origin_to_the_dead_letter_it_ends_in(
    store_url: str, make_app: Any
) -> None:
    """``retry`` publishes the job with the dead letter's id in a header; a dead letter
    written from that job's request keeps it as ``retry_of`` (not as a header to
    re-publish), and both ways are found by query: the dead letter of a retried task
    id, and the dead letters that came from retrying one."""
    from celery.app.task import Context

    from celery_reliable.headers import OWN_HEADERS, RETRY_OF_HEADER
    from celery_reliable.store.dead_letters import republish_options

    app = make_app("contract", reliable_database_url=store_url)

    @app.task(name="contract.request_headers", bind=True, shared=False)
    def request_headers(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(self.request.headers or {})

    store = store_for(app)
    assert store is not None
    try:
        migrate.upgrade(store.engine)
        first = store.dead_letters.write(
            **letter(
                task_name="contract.request_headers",
                options={"exchange": "", "routing_key": "celery", "headers": {"tenant": "a"}},
            )
        )
        assert store.dead_letters.get(first).retry_of is None  # type: ignore[union-attr]
        with embedded_worker(app):
            again = store.dead_letters.retry(first)
            headers = again.get(timeout=10)
            forced = store.dead_letters.retry(first, force=True)
            forced.get(timeout=10)
        assert headers[RETRY_OF_HEADER] == first
        assert headers["tenant"] == "a"

        # The job failed again: its dead letter, written from its request.
        request = Context(
            id=again.id,
            headers=headers,
            delivery_info={"exchange": "", "routing_key": "celery"},
            root_id=None,
            parent_id=None,
        )
        options = republish_options(request)
        # Ours are not re-published (the origin among them); every other header is:
        # the user's, and any a publisher-side integration added, such as Sentry's
        # trace when an earlier test of the session initialised its SDK.
        assert RETRY_OF_HEADER in OWN_HEADERS
        assert options["headers"] == {k: v for k, v in headers.items() if k not in OWN_HEADERS}
        assert options["headers"]["tenant"] == "a"
        second = store.dead_letters.write(
            **letter(task_id=again.id, task_name="contract.request_headers", options=options)
        )
        got = store.dead_letters.get(second)
        assert got is not None
        assert got.retry_of == first
        assert "retry_of" not in got.options
        third = store.dead_letters.write(
            **letter(task_id=forced.id, options={**options, "retry_of": first})
        )
        assert [d.id for d in store.dead_letters.retries_of(first)] == [second, third]
        assert store.dead_letters.retries_of(second) == []
        found = store.dead_letters.of_task_ids([again.id, forced.id, "never-published", again.id])
        assert {task_id: d.id for task_id, d in found.items()} == {
            again.id: second,
            forced.id: third,
        }
        assert store.dead_letters.of_task_ids([]) == {}
        # Retrying the second carries the second's id, not the first's.
        with embedded_worker(app):
            assert store.dead_letters.retry(second).get(timeout=10)[RETRY_OF_HEADER] == second
    finally:
        store.dispose()


@pytest.mark.parametrize("value", ["12", 12, "x", -3, True, 2**70, "١٢", None, 1.5])
def test_a_retry_of_header_set_by_hand_never_stops_a_dead_letter(store: Store, value: Any) -> None:
    from celery.app.task import Context

    from celery_reliable.headers import RETRY_OF_HEADER
    from celery_reliable.store.dead_letters import republish_options

    request = Context(
        id=tid(), headers={RETRY_OF_HEADER: value}, delivery_info={}, root_id=None, parent_id=None
    )
    got = store.dead_letters.get(
        store.dead_letters.write(**letter(options=republish_options(request)))
    )
    assert got is not None
    assert got.retry_of == (12 if value in ("12", 12) and value is not True else None)


def test_downgrade_from_head_and_upgrade_again_keep_the_rows(store: Store) -> None:
    """0004 is undone and done again without losing a dead letter or an index."""
    kept = store.dead_letters.write(**letter(options={"retry_of": 7}))
    migrate.downgrade(store.engine, "0003")
    assert migrate.current(store.engine) == "0003"
    columns = {column["name"] for column in sa.inspect(store.engine).get_columns(dead_letters.name)}
    assert "retry_of" not in columns
    migrate.upgrade(store.engine)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        assert compare_metadata(context, metadata) == []
    got = store.dead_letters.get(kept)
    assert got is not None and got.retry_of is None  # what 0004 added went with it
    assert [d.id for d in store.dead_letters.list()] == [kept]


# -------------------------------------------------------------------------- store down


def _unreachable_url(kind: str, tmp_path: Path) -> tuple[str, Path | None]:
    if kind == "postgresql":
        return f"postgresql+psycopg://reliable@127.0.0.1:{free_port()}/reliable", None
    missing = tmp_path / "missing"
    return f"sqlite:///{missing}/store.sqlite3", missing


OPERATIONS: dict[str, Callable[[Store], Any]] = {
    "claim": lambda s: s.receipts.claim(TASK, key(), H1, tid(), 30),
    "dead_letter": lambda s: s.dead_letters.write(**letter()),
    "unique": lambda s: s.unique.acquire(TASK, key(), tid(), 60),
    "cancel": lambda s: s.cancels.request(tid(), "no store", "test"),
    "pause": lambda s: s.pauses.pause("queue", "emails", "no store", "test"),
    "pauses": lambda s: s.pauses.all(),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_store_down_raises_store_unavailable(kind: str, operation: str, tmp_path: Path) -> None:
    url, _ = _unreachable_url(kind, tmp_path)
    store = new_store(url)
    try:
        for _ in range(2):  # and again: the failure is not cached as something else
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as caught:
                OPERATIONS[operation](store)
            assert time.monotonic() - started < 10
            assert isinstance(caught.value.__cause__, sa.exc.SQLAlchemyError)
    finally:
        store.dispose()


def test_sqlite_store_works_once_its_directory_exists(tmp_path: Path) -> None:
    url, missing = _unreachable_url("sqlite", tmp_path)
    assert missing is not None
    store = new_store(url)
    try:
        for operation in OPERATIONS.values():
            with pytest.raises(StoreUnavailable):
                operation(store)
        missing.mkdir()
        own(store.receipts.claim(TASK, key(), H1, tid(), 30))
        assert store.dead_letters.write(**letter()) >= 1
        holder = tid()
        assert store.unique.acquire(TASK, key(), holder, 60) == holder
        assert migrate.current(store.engine) == migrate.head()
    finally:
        store.dispose()


def test_a_stale_connection_is_replaced_not_reported(postgres_url: str) -> None:
    """The server dropped the pooled connections (a restart, a failover): the next
    claim runs on a new connection instead of failing as unavailable. (PostgreSQL only:
    a SQLite file has no server to drop connections.)"""
    store = new_store(fresh_postgres_database(postgres_url))
    migrate.upgrade(store.engine)
    own(store.receipts.claim(TASK, key(), H1, tid(), 30))  # a pooled connection exists
    admin = sa.create_engine(store.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            dropped = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        admin.dispose()
    assert dropped >= 1
    try:
        claim = own(store.receipts.claim(TASK, key(), H1, tid(), 30))
        assert store.receipts.complete(claim, None)
    finally:
        store.dispose()


def test_postgresql_claims_skip_the_wal_flush_and_completions_wait_for_it(
    postgres_url: str,
) -> None:
    """The hot path's two connections: claims with synchronous_commit off (a lost
    claim is fenced by atomic()), completions durable."""
    url = fresh_postgres_database(postgres_url)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:  # the test server defaults to off
        name = url.rsplit("/", 1)[1]
        connection.execute(sa.text(f"ALTER DATABASE {name} SET synchronous_commit = on"))
    admin.dispose()
    store = new_store(url)
    migrate.upgrade(store.engine)
    try:
        claim = own(store.receipts.claim(TASK, key(), H1, tid(), 30))
        assert store.receipts.complete(claim, None)
        hot = store.receipts._hot
        assert hot is not None
        [relaxed], [durable] = hot._idle[True], hot._idle[False]
        settings = {
            "relaxed": relaxed.execute("SHOW synchronous_commit").fetchone()[0],
            "durable": durable.execute("SHOW synchronous_commit").fetchone()[0],
        }
        assert settings == {"relaxed": "off", "durable": "on"}
    finally:
        store.dispose()


# --- What the web view reads and changes -------------------------------------------


def test_dead_letter_filter_pages_and_bulk_walks(store: Store) -> None:
    from celery_reliable.store.dead_letters import DeadLetterFilter

    letters = store.dead_letters
    ids = [
        letters.write(**letter(task_name="web.a", reason=f"Gateway 50%_{n} down")) for n in range(7)
    ]
    other = letters.write(**letter(task_name="web.b", outcome="discarded", exc_message="TiMeOut"))
    everything = DeadLetterFilter()
    assert [d.id for d in letters.page(everything, 3)] == [other, ids[6], ids[5]]
    assert [d.id for d in letters.page(everything, 3, before_id=ids[5])] == ids[4:1:-1]
    assert [d.id for d in letters.page(everything, 3, after_id=ids[1])] == ids[4:1:-1]
    # The text matches the reason or the message, case-insensitively; % and _ are text.
    assert letters.count_where(DeadLetterFilter(text="gateway 50%_3")) == 1
    assert letters.count_where(DeadLetterFilter(text="50%")) == 7
    assert letters.count_where(DeadLetterFilter(text="5_%")) == 0
    assert [d.id for d in letters.page(DeadLetterFilter(text="timeout"), 10)] == [other]
    assert letters.count_where(DeadLetterFilter(task_name="web.a", outcome="discarded")) == 0
    now = utcnow()
    assert letters.count_where(DeadLetterFilter(since=now - timedelta(minutes=5))) == 8
    assert letters.count_where(DeadLetterFilter(until=now - timedelta(minutes=5))) == 0
    assert letters.task_names() == ["web.a", "web.b"]
    assert letters.pending_by_task() == {"web.a": 7, "web.b": 1}
    # A bulk walk: ascending, in chunks, after a given id.
    walked, after = [], 0
    while chunk := letters.ids_where(DeadLetterFilter(task_name="web.a"), after_id=after, limit=3):
        walked += chunk
        after = chunk[-1]
    assert walked == ids
    with store.engine.begin() as connection:
        connection.execute(
            sa.update(dead_letters).where(dead_letters.c.id == ids[0]).values(retried_at=now)
        )
    assert letters.count_where(DeadLetterFilter(state="retried")) == 1
    assert letters.count_where(DeadLetterFilter(task_name="web.a").pending()) == 6
    assert letters.purge_where(DeadLetterFilter(task_name="web.a", state="pending")) == 6
    assert [d.id for d in letters.page(everything, 10)] == [other, ids[0]]


def test_receipt_and_lock_pages_and_releases(store: Store) -> None:
    now = utcnow()
    for n in range(5):
        store.receipts.claim("web.r", f"k{n}", "h", f"t{n}", lease_seconds=60)
    store.receipts.claim("web.r", "k_old", "h", "t-old", lease_seconds=-1)
    done = store.receipts.claim("web.s", "k%", "h", "t-done", lease_seconds=60)
    assert isinstance(done, Claim)
    store.receipts.complete(done, '"ok"')
    page = store.receipts.page("web.r", limit=3)
    assert [r.key for r in page] == ["k0", "k1", "k2"]
    rest = store.receipts.page("web.r", after=("web.r", "k2"), limit=10)
    assert [r.key for r in rest] == ["k3", "k4", "k_old"]
    assert [r.key for r in store.receipts.page(state="abandoned")] == ["k_old"]
    assert [r.key for r in store.receipts.page(state="succeeded")] == ["k%"]
    assert [r.key for r in store.receipts.page(key_prefix="k%")] == ["k%"]
    assert [r.key for r in store.receipts.page("web.r", key_prefix="k_")] == ["k_old"]
    # A release names the claim: a stale page cannot free a later claim of the key.
    assert not store.receipts.release_claim("web.r", "k_old", "t-someone-else")
    assert store.receipts.release_claim("web.r", "k_old", "t-old")
    assert store.receipts.get("web.r", "k_old") is None
    assert not store.receipts.release_claim("web.s", "k%", "t-done")  # succeeded stays
    assert store.receipts.get("web.s", "k%") is not None

    store.unique.acquire("web.u", "a", "t-a", period=60)
    store.unique.acquire("web.u", "b", "t-b", period=-1)
    locks = store.unique.page("web.u")
    assert [(lock.key, lock.held(now)) for lock in locks] == [("a", True), ("b", False)]
    assert [lock.key for lock in store.unique.page(after=("web.u", "a"))] == ["b"]


def test_a_listing_page_and_its_capped_count_in_one_pass(store: Store) -> None:
    """``page_and_count`` gives what ``page`` and a capped ``count_where`` give, for a
    text filter (one pass over the newest matches) and others, on every page."""
    from celery_reliable.store.dead_letters import DeadLetterFilter

    letters = store.dead_letters
    ids = [
        letters.write(
            **letter(task_name=f"web.p{n % 2}", reason=f"{'slow' if n % 3 else 'odd'} {n}")
        )
        for n in range(30)
    ]
    for where in (
        DeadLetterFilter(text="slow"),
        DeadLetterFilter(task_name="web.p1"),
        DeadLetterFilter(text="ODD"),
        DeadLetterFilter(text="none such"),
    ):
        exact = letters.count_where(where)
        for cap in (3, 1000):
            for before, after in [
                (None, None),
                (ids[20], None),
                (ids[2], None),
                (None, ids[5]),
                (None, ids[25]),
                (None, 0),
            ]:
                rows, count = letters.page_and_count(where, 4, before, after, cap=cap)
                assert [d.id for d in rows] == [
                    d.id for d in letters.page(where, 4, before_id=before, after_id=after)
                ], (where, cap, before, after)
                assert count == min(exact, cap + 1)
    assert letters.count_where(DeadLetterFilter(text="slow"), cap=5) == 6
    assert letters.task_names() == ["web.p0", "web.p1"]


# --------------------------------------------------------------------------- progress


def test_a_beat_is_recorded_updated_read_and_removed(store: Store) -> None:
    started = utcnow()
    job = tid()
    assert store.progress.get(job) is None
    assert store.progress.beat(job, "long.import", "w1@host", 4242, started, 0.25, {"row": 10}) == (
        True,
        None,
    )
    first = store.progress.get(job)
    assert first is not None
    assert (first.task_name, first.hostname, first.pid) == ("long.import", "w1@host", 4242)
    assert first.progress == 0.25 and first.details == {"row": 10}
    assert abs(first.age()) < 5
    # A later beat replaces the row; a value JSON cannot hold is kept as its text.
    assert store.progress.beat(
        job, "long.import", "w1@host", 4242, started, 0.5, {"at": Decimal("1.5")}
    ).kept
    second = store.progress.get(job)
    assert second is not None and second.progress == 0.5 and second.details == {"at": "1.5"}
    assert second.beat_at >= first.beat_at
    assert [p.task_id for p in store.progress.running()] == [job]
    store.progress.finish(job)
    assert store.progress.get(job) is None


def test_a_beat_renews_its_claim_s_lease_in_the_same_transaction(store: Store) -> None:
    held = own(claim(store, key(), lease_seconds=5))
    before = held.lease_expires_at
    assert store.progress.beat(held.task_id, TASK, None, 1, utcnow(), None, {}, held, 600).kept
    receipt = store.receipts.get(TASK, held.key)
    assert receipt is not None and receipt.lease_expires_at is not None
    assert receipt.lease_expires_at > before + timedelta(seconds=500)
    # Taken over: the beat is kept, the lease is not this execution's to renew.
    store.receipts.release(held)
    lost = store.progress.beat(held.task_id, TASK, None, 1, utcnow(), None, {}, held, 600)
    assert not lost.kept
    assert store.progress.get(held.task_id) is not None


def test_heartbeats_of_dead_workers_are_pruned(store: Store) -> None:
    old, new = tid(), tid()
    store.progress.beat(old, "t", None, 1, utcnow(), None, {})
    store.progress.beat(new, "t", None, 1, utcnow(), None, {})
    # Its worker died two hours ago: no beat since.
    execute(
        store,
        sa.update(progress_table)
        .where(progress_table.c.task_id == old)
        .values(beat_at=utcnow() - timedelta(hours=2)),
    )
    assert store.progress.prune(3600) == 1
    assert [p.task_id for p in store.progress.running()] == [new]


# ------------------------------------------------------------------------------ steps


def effect_notes(store: Store) -> list[str]:
    with store.engine.connect() as connection:
        return list(connection.execute(sa.select(effects.c.note).order_by(effects.c.id)).scalars())


def test_a_step_is_advanced_finished_and_read(store: Store) -> None:
    job = key()
    assert store.steps.get(TASK, job, "rows") is None
    store.steps.advance(TASK, job, "rows", '{"id": 1}')
    first = store.steps.get(TASK, job, "rows")
    assert first is not None
    assert (first.cursor, first.advances, first.finished) == ('{"id": 1}', 1, False)
    assert first.started_at == first.updated_at
    store.steps.advance(TASK, job, "rows", '{"id": 2}')
    store.steps.finish(TASK, job, "rows")
    done = store.steps.get(TASK, job, "rows")
    assert done is not None
    assert (done.cursor, done.advances, done.finished) == ('{"id": 2}', 2, True)
    assert done.started_at == first.started_at and done.updated_at >= first.updated_at
    # A step that never advanced gets its row when it finishes.
    store.steps.finish(TASK, job, "validate")
    validate = store.steps.get(TASK, job, "validate")
    assert validate is not None and validate.cursor is None and validate.finished
    assert validate.advances == 0
    assert [s.step for s in store.steps.of_job(TASK, job)] == ["rows", "validate"]
    # Steps are per task and job.
    assert store.steps.get(TASK, key(), "rows") is None
    assert store.steps.get("other.task", job, "rows") is None


def test_names_as_wide_as_the_columns(store: Store) -> None:
    task, job, step = "t" * 255, "j" * 255, "s" * 255
    store.steps.advance(task, job, step, "1")
    row = store.steps.get(task, job, step)
    assert row is not None and (row.task_name, row.job, row.step) == (task, job, step)


def test_advance_in_commits_or_rolls_back_with_the_callers_writes(store: Store) -> None:
    test_metadata.create_all(store.engine)
    job = key()
    with store.session() as session:
        session.execute(effects.insert().values(note="item 1"))
        store.steps.advance_in(session.connection(), TASK, job, "rows", "1")
    with pytest.raises(ZeroDivisionError), store.session() as session:
        session.execute(effects.insert().values(note="item 2"))
        store.steps.advance_in(session.connection(), TASK, job, "rows", "2")
        _ = 1 / 0
    row = store.steps.get(TASK, job, "rows")
    assert row is not None and (row.cursor, row.advances) == ("1", 1)
    assert effect_notes(store) == ["item 1"]


def test_advance_step_in_tells_when_it_committed(store: Store) -> None:
    test_metadata.create_all(store.engine)
    job, committed = key(), []
    with pytest.raises(ZeroDivisionError), store.atomic() as session:
        store.advance_step_in(session, TASK, job, "rows", "1", lambda: committed.append(1))
        _ = 1 / 0
    assert committed == [] and store.steps.get(TASK, job, "rows") is None
    with store.atomic() as session:
        store.advance_step_in(session, TASK, job, "rows", "2", lambda: committed.append(2))
        assert committed == []
    assert committed == [2]


def test_hold_in_keeps_the_receipt_in_progress(store: Store) -> None:
    """atomic() inside a step: the writes commit, the receipt stays this execution's
    claim (completed when the body returns)."""
    test_metadata.create_all(store.engine)
    mine = own(claim(store, key(), lease_seconds=30))
    lease = mine.lease_expires_at
    with store.atomic(mine, complete=False) as session:
        session.execute(effects.insert().values(note="item 1"))
    held = store.receipts.get(TASK, mine.key)
    assert held is not None and held.state == "in_progress" and not mine.completed
    assert held.lease_expires_at == lease  # no heartbeat: the lease is not renewed
    # With a heartbeat's lease, the transaction renews it.
    with store.atomic(mine, complete=False, lease_seconds=600) as session:
        session.execute(effects.insert().values(note="item 2"))
    renewed = store.receipts.get(TASK, mine.key)
    assert renewed is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > lease + timedelta(seconds=500)
    assert store.receipts.complete(mine, "2") is True
    assert effect_notes(store) == ["item 1", "item 2"]


def test_hold_in_after_takeover_raises_lease_lost_and_rolls_back(store: Store) -> None:
    test_metadata.create_all(store.engine)
    k, t0 = key(), utcnow()
    first = own(claim(store, k, lease_seconds=10, now=t0))
    own(claim(store, k, lease_seconds=10, now=t0 + timedelta(seconds=11)))
    for lease_seconds in (None, 600.0):
        with (
            pytest.raises(LeaseLost),
            store.atomic(first, complete=False, lease_seconds=lease_seconds) as session,
        ):
            session.execute(effects.insert().values(note=k))
            store.steps.advance_in(session.connection(), TASK, k, "rows", "1")
    assert effect_notes(store) == []
    assert store.steps.get(TASK, k, "rows") is None


def test_steps_not_written_for_the_ttl_are_pruned(store: Store) -> None:
    old, new = key(), key()
    store.steps.finish(TASK, old, "a")
    store.steps.advance(TASK, new, "a", "1")
    execute(
        store,
        sa.update(steps_table)
        .where(steps_table.c.job == old)
        .values(updated_at=utcnow() - timedelta(hours=2)),
    )
    assert store.steps.prune(3600) == 1
    assert store.steps.get(TASK, old, "a") is None
    assert store.steps.get(TASK, new, "a") is not None


# ---------------------------------------------------------------------------- cancels


def test_a_cancel_is_recorded_once_and_read_back(store: Store) -> None:
    job = tid()
    assert store.cancels.get(job) is None
    row, new = store.cancels.request(job, "wrong file", "alice@ops")
    assert new and (row.task_id, row.reason, row.requested_by) == (job, "wrong file", "alice@ops")
    assert row.describe() == "cancelled by alice@ops: wrong file"
    assert abs((utcnow() - row.requested_at).total_seconds()) < 5
    # A second cancel changes nothing: the first one's reason, author and time stand.
    again, new = store.cancels.request(job, "another reason", "bob@ops")
    assert not new and again == row == store.cancels.get(job)
    # No reason, no author: still a cancel; a name wider than the column is cut.
    bare, _ = store.cancels.request(tid(), "", "x" * 300)
    assert bare.reason is None and bare.requested_by == "x" * 255
    assert bare.describe() == f"cancelled by {'x' * 255}"


def test_cancels_since_a_time_all_and_pruned(store: Store) -> None:
    now = utcnow()
    old, middle, new = tid(), tid(), tid()
    store.cancels.request(old, "old", None, now=now - timedelta(days=8))
    store.cancels.request(middle, "middle", None, now=now - timedelta(minutes=10))
    store.cancels.request(new, "new", None, now=now)
    assert [c.task_id for c in store.cancels.since(None)] == [old, middle, new]
    # At or after: a worker that read up to `now` reads `new` again, never misses it.
    assert [c.task_id for c in store.cancels.since(now - timedelta(minutes=10))] == [middle, new]
    assert [c.task_id for c in store.cancels.since(now)] == [new]
    assert [c.task_id for c in store.cancels.all()] == [new, middle, old]
    assert [c.task_id for c in store.cancels.all(limit=1)] == [new]
    assert store.cancels.prune(7 * 24 * 3600) == 1
    assert [c.task_id for c in store.cancels.all()] == [new, middle]


# ----------------------------------------------------------------------------- pauses


def test_a_pause_is_recorded_once_read_back_and_resumed(store: Store) -> None:
    assert store.pauses.all() == []
    assert store.pauses.get("queue", "emails") is None
    row, new = store.pauses.pause("queue", "emails", "mail server down", "alice@ops")
    assert new and (row.kind, row.name, row.reason, row.paused_by) == (
        "queue",
        "emails",
        "mail server down",
        "alice@ops",
    )
    assert row.describe() == "queue emails paused by alice@ops: mail server down"
    assert abs((utcnow() - row.paused_at).total_seconds()) < 5
    # A second pause changes nothing: the first one's reason, author and time stand.
    again, new = store.pauses.pause("queue", "emails", "another reason", "bob@ops")
    assert not new and again == row == store.pauses.get("queue", "emails")
    # A task of the same name is another pause; no reason, no author: still a pause.
    task, new = store.pauses.pause("task", "emails", "", "x" * 300)
    assert new and task.reason is None and task.paused_by == "x" * 255
    assert task.describe() == f"task emails paused by {'x' * 255}"
    store.pauses.pause("queue", "billing")
    assert [p.key for p in store.pauses.all()] == [
        ("queue", "billing"),
        ("queue", "emails"),
        ("task", "emails"),
    ]
    assert store.pauses.all()[1] == row  # paused_at read back as the datetime written
    # Resume: the row is gone and returned; resuming again finds nothing.
    assert store.pauses.resume("queue", "emails") == row
    assert store.pauses.resume("queue", "emails") is None
    assert store.pauses.get("queue", "emails") is None
    assert [p.key for p in store.pauses.all()] == [("queue", "billing"), ("task", "emails")]
    with pytest.raises(ValueError):
        store.pauses.pause("worker", "w1")
    with pytest.raises(ValueError):
        store.pauses.pause("queue", "")


def test_two_processes_pausing_at_once_write_one_pause(store: Store) -> None:
    """Real threads racing on the same pause: one writes it, the others find it."""
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def pause_it(who: str) -> None:
        barrier.wait()
        results.append(store.pauses.pause("task", "shop.charge", who, who)[1])

    threads = [threading.Thread(target=pause_it, args=(f"t{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, False, True]
    [row] = store.pauses.all()
    assert row.reason == row.paused_by


def test_a_beat_reads_its_job_s_cancel_in_its_transaction(store: Store) -> None:
    held = own(claim(store, key(), lease_seconds=5))
    beat = store.progress.beat(held.task_id, TASK, None, 1, utcnow(), None, {}, held, 600)
    assert beat == (True, None)
    cancel, _ = store.cancels.request(held.task_id, "stop", "alice@ops")
    beat = store.progress.beat(held.task_id, TASK, None, 1, utcnow(), 0.5, {}, held, 600)
    assert beat.kept and beat.cancel == cancel  # requested_at read back as a datetime
    assert beat.cancel.describe() == "cancelled by alice@ops: stop"
    # The beat was written all the same, and the lease renewed.
    progress = store.progress.get(held.task_id)
    assert progress is not None and progress.progress == 0.5
    receipt = store.receipts.get(TASK, held.key)
    assert receipt is not None and receipt.lease_expires_at is not None
    assert receipt.lease_expires_at > utcnow() + timedelta(seconds=500)


# ------------------------------------------------------------------ periodic slots (beat)

DUE = datetime(2026, 12, 7, 13, 0, 0)


def beat_claim(store: Store, entry: str, due: datetime, by: str, lease: float = 10) -> bool:
    return store.beat_runs.claim(
        entry, due, task_name="bt.tick", task_id=f"{entry}-{due}", by=by, lease_seconds=lease
    )


def test_of_n_beats_claiming_one_slot_one_wins(store: Store, store_url: str) -> None:
    """Eight claims at once, each on a store of its own (as eight beat processes):
    one insert wins the (entry, due time); claims of the next slot are a new race."""
    stores = [new_store(store_url) for _ in range(8)]
    try:
        won = race(8, lambda i: beat_claim(stores[i], "e", DUE, f"beat-{i}"))
        assert sorted(won) == [False] * 7 + [True]
        [row] = store.beat_runs.all("e")
        assert (row.state, row.claimed_by) == ("claimed", f"beat-{won.index(True)}")
        assert row.lease_expires_at is not None and row.publishes == 0
        assert beat_claim(stores[0], "e", DUE + timedelta(seconds=1), "beat-0")
    finally:
        for each in stores:
            each.dispose()


def test_a_claim_published_abandoned_taken_over_or_given_back(store: Store) -> None:
    runs = store.beat_runs
    assert beat_claim(store, "e", DUE, "a")
    runs.published("e", DUE)
    [row] = runs.all("e")
    assert (row.state, row.publishes, row.lease_expires_at) == ("published", 1, None)
    assert row.published_at is not None
    # A claim whose lease ran out (its beat died before publishing) is an orphan: one
    # beat of several takes it over.
    assert beat_claim(store, "e", DUE + timedelta(seconds=1), "dead", lease=0.01)
    later = utcnow() + timedelta(seconds=1)
    [orphan] = runs.orphans(later)
    assert (orphan.entry, orphan.due_at, orphan.claimed_by) == (
        "e",
        DUE + timedelta(seconds=1),
        "dead",
    )
    taken = race(4, lambda i: runs.take_over("e", orphan.due_at, f"b{i}", 10, later))
    assert taken.count(True) == 1
    assert runs.orphans(later) == []  # its new lease runs
    assert not runs.abandon("e", orphan.due_at, "x", later)  # not an orphan any more
    # An orphan older than the catch-up is skipped instead.
    assert beat_claim(store, "e", DUE + timedelta(seconds=2), "dead", lease=0.01)
    assert runs.abandon("e", DUE + timedelta(seconds=2), "b0", later)
    row = runs.all("e")[-1]
    assert (row.state, row.skipped, row.skipped_from) == ("skipped", 1, row.due_at)
    # A beat whose broker refused the message gives its claim back: an orphan at once.
    assert beat_claim(store, "e", DUE + timedelta(seconds=3), "c")
    assert not runs.give_back("e", DUE + timedelta(seconds=3), "someone else")
    assert runs.give_back("e", DUE + timedelta(seconds=3), "c")
    assert [r.due_at for r in runs.orphans(utcnow() + timedelta(milliseconds=5))] == [
        DUE + timedelta(seconds=3)
    ]
    runs.failed("e", DUE + timedelta(seconds=3))
    assert runs.all("e")[-1].state == "failed"


def test_skipped_slots_are_one_row_and_where_each_entry_stands(store: Store) -> None:
    runs = store.beat_runs
    wrote = [
        runs.skip(
            "e",
            DUE,
            task_name="bt.tick",
            task_id="t",
            by=f"b{i}",
            skipped=20,
            skipped_from=DUE - timedelta(seconds=19),
        )
        for i in range(2)
    ]
    assert wrote == [True, False]  # the second beat to skip them does not say it again
    assert beat_claim(store, "e", DUE + timedelta(seconds=1), "b0")
    runs.published("e", DUE + timedelta(seconds=1))
    assert beat_claim(store, "e", DUE + timedelta(seconds=2), "b0")
    assert beat_claim(store, "f", DUE - timedelta(days=1), "b0")
    assert runs.last_due() == {"e": DUE + timedelta(seconds=2), "f": DUE - timedelta(days=1)}
    assert {e: r.due_at for e, r in runs.latest("published").items()} == {
        "e": DUE + timedelta(seconds=1)
    }
    assert {e: r.state for e, r in runs.latest().items()} == {"e": "claimed", "f": "claimed"}


def test_pruning_keeps_each_entry_s_newest_slot(store: Store) -> None:
    """The newest row says where an entry's schedule stands after every beat was down
    (which slots to catch up): it stays however old it is."""
    runs = store.beat_runs
    for seconds in range(5):
        assert beat_claim(store, "e", DUE + timedelta(seconds=seconds), "b")
    assert beat_claim(store, "old", DUE - timedelta(days=30), "b")
    assert beat_claim(store, "old", DUE - timedelta(days=29), "b")
    now = DUE + timedelta(days=1)
    assert runs.prune(3600, now=now) == 5
    assert runs.last_due() == {"e": DUE + timedelta(seconds=4), "old": DUE - timedelta(days=29)}
    assert runs.prune(3600, now=now) == 0
