"""The transactional outbox (``publish_in``) with a real Redis broker, a real embedded
worker, and a SQLite and a PostgreSQL store, written through the application's own
SQLAlchemy ``Session`` and ``Connection``.

A committed message runs once, a rolled-back one never (proven by a message committed
after it, which ran, and by an empty outbox); the message the relay publishes is the
one ``apply_async`` would have published; a message published twice (by hand here,
byte for byte as a relay would; ``test_outbox_processes.py`` kills a real relay) runs
once: a DUPLICATE after a success, SNOOZED then DUPLICATE while the first copy runs, a
crashed copy's receipt taken over, Celery's retries of it run. A broker down for 5 s
loses nothing; 1,000 messages of 4 concurrent writers leave through 2 relays once each,
in each writer's commit order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery, chain, group
from kombu import Producer
from sqlalchemy.orm import Session

from celery_reliable import Discard, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.errors import OutboxError
from celery_reliable.outbox import publish_in
from celery_reliable.outbox.message import OutboxMessage
from celery_reliable.outbox.relay import Relay
from celery_reliable.store import Store, migrate, store_for
from celery_reliable.store.schema import receipts
from celery_reliable.store.timeutil import utcnow
from tests.docs_blocks import DOCS, marked_block
from tests.support.celery_apps import new_app, new_redis_db
from tests.support.outcomes import OutcomeRecorder
from tests.support.servers import RedisServer
from tests.support.waiting import wait_until
from tests.support.workers import embedded_worker, settle

pytestmark = pytest.mark.integration

# The application's own table, written in the same transaction as the message.
app_metadata = sa.MetaData()
orders = sa.Table(
    "outbox_test_orders",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("note", sa.String(64), nullable=False),
)


class Flaky(Exception):
    pass


class Shop:
    """The module's app, its tasks, its store, the application's own engine, and the
    Redis its tasks count their runs in."""

    def __init__(self, app: Celery, store_url: str) -> None:
        self.app = app
        self.effects = redis.Redis.from_url(app.conf.broker_url)
        effects = self.effects

        @app.task(base=ReliableTask, name="ob.mark", bind=True, timeout=30, shared=False)
        def mark(self: ReliableTask, key: str) -> str:
            effects.incr(f"runs:{key}")
            return key

        @app.task(base=ReliableTask, name="ob.block", bind=True, timeout=30, shared=False)
        def block(self: ReliableTask, key: str) -> str:
            effects.incr(f"runs:{key}")
            effects.set(f"started:{key}", 1)
            deadline = time.monotonic() + 25
            while not effects.exists(f"release:{key}") and time.monotonic() < deadline:
                time.sleep(0.02)
            return key

        @app.task(base=ReliableTask, name="ob.flaky", bind=True, timeout=30, shared=False)
        @retry_on(Flaky, wait=fixed(0.1), attempts=3)
        def flaky(self: ReliableTask, key: str) -> str:
            if effects.incr(f"runs:{key}") == 1:
                raise Flaky("the first run fails")
            return key

        @app.task(
            base=ReliableTask,
            name="ob.keyed",
            bind=True,
            timeout=30,
            idempotency_key="k:{key}",
            shared=False,
        )
        def keyed(self: ReliableTask, key: str) -> str:
            effects.incr(f"runs:{key}")
            return key

        @app.task(
            base=ReliableTask,
            name="ob.unique",
            bind=True,
            timeout=30,
            unique={"period": 60},
            shared=False,
        )
        def unique(self: ReliableTask, key: str) -> str:
            return key

        @app.task(base=ReliableTask, name="ob.follow", bind=True, timeout=30, shared=False)
        def follow(self: ReliableTask, key: str, fail: bool) -> str:
            """Publishes its follow-up in its own transaction, then fails, or not."""
            with self.atomic() as session:
                publish_in(session, mark.s(f"{key}:next"))
                if fail:
                    raise Discard("rolled back with the follow-up")
            return key

        self.mark, self.block, self.flaky, self.keyed, self.unique, self.follow = (
            mark,
            block,
            flaky,
            keyed,
            unique,
            follow,
        )
        store = store_for(app)
        assert store is not None
        migrate.upgrade(store.engine)
        self.store: Store = store
        # The application's engine: its own pool, not the store's.
        self.engine = sa.create_engine(store_url)
        app_metadata.create_all(self.engine)

    def runs(self, key: str) -> int:
        return int(self.effects.get(f"runs:{key}") or 0)

    def receipt(self, task: str, key: str) -> Any:
        with self.store.engine.connect() as connection:
            return connection.execute(
                sa.select(receipts).where(receipts.c.task_name == task, receipts.c.key == key)
            ).first()


@pytest.fixture(scope="module")
def shop(redis_url: str, module_store_url: str) -> Iterator[Shop]:
    app = new_app(
        redis_url,
        "outbox",
        reliable_database_url=module_store_url,
        # The relays are the tests' own (``relaying``): a test decides when one runs.
        reliable_outbox_relay=False,
    )
    built = Shop(app, module_store_url)
    try:
        yield built
    finally:
        built.engine.dispose()


@pytest.fixture(scope="module")
def worker(shop: Shop) -> Iterator[Any]:
    with embedded_worker(shop.app, concurrency=4) as running:
        yield running


class Lines:
    """What a relay said, as (level, line)."""

    def __init__(self) -> None:
        self.said: list[tuple[int, str]] = []

    def __call__(self, level: int, line: str) -> None:
        self.said.append((level, line))

    def matching(self, text: str) -> list[str]:
        return [line for _, line in self.said if text in line]


@contextlib.contextmanager
def relaying(app: Celery, store: Store, **kw: Any) -> Iterator[Lines]:
    """A relay, as a worker runs one, in a thread, until the block ends."""
    lines = Lines()
    relay = Relay(app, store, poll_interval=0.2, report=lines, **kw)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


def key(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def transaction(shop: Shop, kind: str) -> Iterator[Session | sa.Connection]:
    """The application's own transaction: a Session's, or a Connection's."""
    if kind == "session":
        with Session(shop.engine) as session, session.begin():
            yield session
    else:
        with shop.engine.begin() as connection:
            yield connection


def add_order(target: Session | sa.Connection, note: str) -> None:
    target.execute(orders.insert().values(note=note))


def order_count(shop: Shop, note: str) -> int:
    with shop.engine.connect() as connection:
        return int(
            connection.execute(
                sa.select(sa.func.count()).select_from(orders).where(orders.c.note == note)
            ).scalar_one()
        )


def waiting(shop: Shop) -> list[str]:
    """The task ids the outbox holds."""
    return [row.task_id for row in shop.store.outbox.all()]


class Rollback(Exception):
    pass


@pytest.mark.parametrize("kind", ["session", "connection"])
def test_a_committed_message_runs_once_and_a_rolled_back_one_never(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder, kind: str
) -> None:
    dropped, kept = key("dropped"), key("kept")
    with pytest.raises(Rollback), transaction(shop, kind) as tx:
        add_order(tx, dropped)
        lost = publish_in(tx, shop.mark.s(dropped))
        # Not committed: no other connection sees it (a relay's look takes no lock).
        assert shop.store.outbox.first_id() is None
        raise Rollback()
    with transaction(shop, kind) as tx:
        add_order(tx, kept)
        result = publish_in(tx, shop.mark.s(kept))
    assert order_count(shop, kept) == 1 and order_count(shop, dropped) == 0
    assert waiting(shop) == [result.id]
    with relaying(shop.app, shop.store) as lines:
        assert result.get(timeout=30) == kept
        wait_until(lambda: waiting(shop) == [], "the published row deleted")
        settle(shop.app)
    assert shop.runs(kept) == 1 and shop.runs(dropped) == 0
    assert [e.outcome.value for e in outcomes.for_id(result.id)] == ["succeeded"]
    assert lost.state == "PENDING"
    assert lines.matching("published 1 message (outbox ids ")
    # The message claimed its task id: a second copy would be a DUPLICATE.
    assert shop.receipt("ob.mark", result.id).state == "succeeded"


def test_the_relay_publishes_what_apply_async_would(redis_url: str, shop: Shop) -> None:
    """On a broker nobody consumes: the raw message a relay sends of a publish_in and
    the one apply_async sends, with the same options (countdown, expires, priority,
    headers, a queue), differ only in the task id, the times and the outbox's mark."""
    app = new_app(redis_url, "outbox-raw", reliable_database_url=shop.store.url)
    app.conf.task_create_missing_queues = True

    @app.task(base=ReliableTask, name="ob.raw", timeout=30, shared=False)
    def raw(a: int, b: str = "x") -> str:
        return f"{a}{b}"

    options: dict[str, Any] = {
        "countdown": 30,
        "expires": 600,
        "priority": 3,
        "headers": {"tenant": "acme"},
        "queue": "raw",
    }
    raw.apply_async((1,), {"b": "y"}, task_id="direct", **options)
    with shop.engine.begin() as connection:
        written = publish_in(connection, raw.s(1, b="y"), **options)
    store = store_for(app)
    assert store is not None
    # kombu's Redis keeps priority 3 in a list of its own.
    queue = "raw\x06\x163"
    with relaying(app, store) as lines:
        client = redis.Redis.from_url(app.conf.broker_url)
        wait_until(
            lambda: client.llen(queue) == 2,
            "both messages on the queue",
            seen=lambda: (client.keys(), lines.said),
        )
    direct, relayed = (json.loads(m) for m in reversed(client.lrange(queue, 0, -1)))
    assert relayed["headers"].pop("reliable_outbox") == 1
    for message in (direct, relayed):
        headers, properties = message["headers"], message["properties"]
        for name in ("reliable_sent_at", "eta", "expires", "id", "root_id"):
            assert headers.pop(name)
        for name in ("correlation_id", "delivery_tag"):
            assert properties.pop(name)
    assert relayed == direct
    assert relayed["headers"]["tenant"] == "acme"
    assert relayed["properties"]["priority"] == 3
    assert written.id != "direct"


def test_a_group_and_a_chain_write_their_messages(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder
) -> None:
    a, b, c = key("g1"), key("g2"), key("c")
    with shop.engine.begin() as connection:
        grouped = publish_in(connection, group(shop.mark.s(a), shop.mark.s(b)))
        chained = publish_in(connection, chain(shop.mark.si(c), shop.mark.si(c)))
    assert len(waiting(shop)) == 3  # the group's two, the chain's first
    with relaying(shop.app, shop.store):
        assert grouped.get(timeout=30) == [a, b]
        assert chained.get(timeout=30) == c
    assert (shop.runs(a), shop.runs(b), shop.runs(c)) == (1, 1, 2)


def test_another_database_is_refused(shop: Shop, tmp_path: Any) -> None:
    elsewhere = sa.create_engine(f"sqlite:///{tmp_path}/other.sqlite3")
    try:
        with pytest.raises(OutboxError) as refused, Session(elsewhere) as session:
            publish_in(session, shop.mark.s("x"))
    finally:
        elsewhere.dispose()
    message = str(refused.value)
    assert message.startswith(
        f"publish_in: the transaction is on sqlite:///{tmp_path}/other.sqlite3, but the "
        "store (reliable_database_url) is "
    )
    assert message.endswith(
        "the outbox must be in the database your transaction writes to: point "
        "reliable_database_url at it (in Django: 'django')"
    )
    assert "\n" not in message
    assert waiting(shop) == []
    with pytest.raises(TypeError, match="pass a SQLAlchemy Session or Connection"):
        publish_in(object(), shop.mark.s("x"))


def test_a_unique_task_is_refused(shop: Shop) -> None:
    refused = pytest.raises(OutboxError, match="has unique=, which publish_in does not take")
    with refused, shop.engine.begin() as connection:
        publish_in(connection, shop.unique.s("x"))
    assert waiting(shop) == []


def test_a_task_publishes_its_follow_up_in_its_own_transaction(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder
) -> None:
    kept, dropped = key("kept"), key("dropped")
    with relaying(shop.app, shop.store):
        assert shop.follow.delay(kept, False).get(timeout=30) == kept
        wait_until(lambda: shop.runs(f"{kept}:next") == 1, "the follow-up to run")
        failed = shop.follow.delay(dropped, True)
        assert [e.outcome.value for e in outcomes.wait_for(failed.id)] == ["discarded"]
        settle(shop.app)
    assert shop.runs(f"{dropped}:next") == 0
    assert waiting(shop) == []


# -- a message published twice --------------------------------------------------------


def written(shop: Shop, signature: Any) -> tuple[Any, OutboxMessage]:
    """Commit ``signature``'s message; take its row as a relay reads it, and delete it
    (the test publishes it itself)."""
    with shop.engine.begin() as connection:
        result = publish_in(connection, signature)
    (row,) = [r for r in shop.store.outbox.all() if r.task_id == result.id]
    with shop.store.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM reliable_outbox WHERE id = :id"), {"id": row.id})
    return result, OutboxMessage.from_row(row)


def publish(shop: Shop, message: OutboxMessage) -> None:
    """What a relay does with a row."""
    with shop.app.connection_for_write() as connection:
        message.publish(Producer(connection, auto_declare=False), shop.app.amqp.queues)


def test_a_second_copy_after_the_first_succeeded_is_a_duplicate(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder
) -> None:
    name = key("twice")
    result, message = written(shop, shop.mark.s(name))
    publish(shop, message)
    outcomes.wait_for(result.id, 1)
    publish(shop, message)
    found = outcomes.wait_for(result.id, 2)
    assert [e.outcome.value for e in found] == ["succeeded", "duplicate"]
    assert found[1].reason == (
        "this outbox message already ran and succeeded (a relay published it twice)"
    )
    assert shop.runs(name) == 1
    assert result.get(timeout=10) == name  # the duplicate returns the stored result


def test_a_second_copy_while_the_first_runs_snoozes_then_is_a_duplicate(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder
) -> None:
    name = key("during")
    result, message = written(shop, shop.block.s(name))
    publish(shop, message)
    wait_until(lambda: shop.effects.exists(f"started:{name}"), "the first copy to start")
    publish(shop, message)
    snoozed = outcomes.wait_for(result.id, 1)
    assert snoozed[0].outcome.value == "snoozed"
    assert snoozed[0].reason.startswith("this outbox message is running elsewhere")
    shop.effects.set(f"release:{name}", 1)
    found = outcomes.wait_for(
        result.id, until=lambda events: [e.outcome.value for e in events][-1:] == ["duplicate"]
    )
    assert sorted(e.outcome.value for e in found) == ["duplicate", "snoozed", "succeeded"]
    assert shop.runs(name) == 1


def test_a_crashed_copy_s_receipt_is_taken_over(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder
) -> None:
    """As a worker SIGKILLed in the body leaves it: the task id's receipt in progress,
    its lease over. The redelivered message takes it over and runs."""
    name = key("crashed")
    result, message = written(shop, shop.mark.s(name))
    long_ago = utcnow().replace(year=2000)
    with shop.store.engine.begin() as connection:
        connection.execute(
            receipts.insert().values(
                task_name="ob.mark",
                key=result.id,
                payload_hash="outbox",
                state="in_progress",
                task_id=result.id,
                claim_token="dead-worker",
                claims=1,
                lease_expires_at=long_ago,
                created_at=long_ago,
                updated_at=long_ago,
            )
        )
    publish(shop, message)
    assert [e.outcome.value for e in outcomes.wait_for(result.id, 1)] == ["succeeded"]
    row = shop.receipt("ob.mark", result.id)
    assert (row.state, row.claims) == ("succeeded", 2)
    assert shop.runs(name) == 1


def test_celery_retries_of_an_outbox_message_run(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder
) -> None:
    name = key("flaky")
    with shop.engine.begin() as connection:
        result = publish_in(connection, shop.flaky.s(name))
    with relaying(shop.app, shop.store):
        assert result.get(timeout=30) == name
    found = outcomes.wait_for(result.id, 2)
    assert [e.outcome.value for e in found] == ["retried", "succeeded"]
    assert shop.runs(name) == 2


def test_a_task_s_own_key_is_kept_and_other_messages_claim_nothing(
    shop: Shop, worker: Any, outcomes: OutcomeRecorder
) -> None:
    name = key("keyed")
    with shop.engine.begin() as connection:
        result = publish_in(connection, shop.keyed.s(name))
    with relaying(shop.app, shop.store):
        assert result.get(timeout=30) == name
    assert shop.receipt("ob.keyed", f"k:{name}").task_id == result.id
    assert shop.receipt("ob.keyed", result.id) is None
    # Not from the outbox: no receipt for its task id.
    direct = shop.mark.delay(key("direct"))
    assert direct.get(timeout=30)
    assert shop.receipt("ob.mark", direct.id) is None


# -- the broker down; writers and relays at once ------------------------------------------


def test_a_broker_down_for_5s_loses_nothing(shop: Shop) -> None:
    server = RedisServer(persistent=True)
    server.start()
    app = Celery("outbox-outage", broker=f"{server.url}/0", set_as_current=False)
    app.conf.update(reliable_database_url=shop.store.url, broker_connection_timeout=1)
    try:
        store = store_for(app)
        assert store is not None
        client = redis.Redis.from_url(f"{server.url}/0")

        def write(n: int) -> list[str]:
            ids = []
            for _ in range(n):
                with shop.engine.begin() as connection:
                    ids.append(publish_in(connection, app.signature("ob.mark", (key("o"),))).id)
            return ids

        def queued() -> list[str]:
            return [json.loads(m)["headers"]["id"] for m in client.lrange("celery", 0, -1)]

        with relaying(app, store) as lines:
            before = write(5)
            wait_until(lambda: len(queued()) == 5, "the first messages published")
            server.stop()
            during = write(20)
            wait_until(lambda: lines.matching("broker unreachable"), "the relay to see it")
            time.sleep(5)  # the outage lasts 5 s
            server.start()
            wait_until(lambda: len(queued()) == 25, "every message published", timeout=30)
            assert sorted(queued()) == sorted(before + during)
            assert store.outbox.all() == []
        assert len(lines.matching("broker unreachable")) == 1, lines.said
        assert len(lines.matching("broker reachable again after ")) == 1, lines.said
    finally:
        app.close()
        server.remove()


def test_a_thousand_messages_of_four_writers_leave_through_two_relays_once_in_order(
    redis_url: str, shop: Shop
) -> None:
    app = Celery("outbox-order", broker=new_redis_db(redis_url), set_as_current=False)
    app.conf.update(reliable_database_url=shop.store.url)
    store = store_for(app)
    assert store is not None
    client = redis.Redis.from_url(app.conf.broker_url)
    errors: list[BaseException] = []

    def writer(name: str) -> Callable[[], None]:
        def write() -> None:
            try:
                for n in range(0, 250, 5):  # 50 transactions of 5 messages
                    with Session(shop.engine) as session, session.begin():
                        for m in range(n, n + 5):
                            publish_in(session, app.signature("ob.mark", (f"{name}:{m}",)))
            except BaseException as exc:
                errors.append(exc)

        return write

    threads = [threading.Thread(target=writer(f"w{i}")) for i in range(4)]
    with relaying(app, store) as first, relaying(app, store) as second:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, errors
        wait_until(lambda: client.llen("celery") >= 1000, "1,000 messages", timeout=60)
        wait_until(lambda: store.outbox.all() == [], "an empty outbox")
    arrived = [
        json.loads(m)["headers"]["argsrepr"] for m in reversed(client.lrange("celery", 0, -1))
    ]
    keys = [text.strip("(),'") for text in arrived]
    assert len(keys) == 1000 and len(set(keys)) == 1000
    for name in ("w0", "w1", "w2", "w3"):
        mine = [int(k.split(":")[1]) for k in keys if k.startswith(f"{name}:")]
        assert mine == list(range(250)), name
    published = [first.matching("published "), second.matching("published ")]
    assert all(published), "both relays published"


@pytest.mark.only_store("postgresql")  # SQLite: a relay holds the write lock, one at a time
def test_a_relay_never_publishes_past_rows_another_relay_holds(shop: Shop) -> None:
    """PostgreSQL, two relays: one holds a writer's first two messages; a message of
    another writer commits under a lower id, then the first writer's third. The second
    relay's SKIP LOCKED batch is the late message and the third one, past the rows the
    first holds: it keeps the late message only, so the first writer's messages still
    leave in its order."""
    from celery_reliable.store.schema import outbox

    assert shop.store.engine.dialect.name == "postgresql"

    def message(name: str) -> Any:
        return shop.app.signature("ob.none", (name,), queue="nobody")

    with shop.engine.begin() as connection:
        connection.execute(sa.delete(outbox))  # what an earlier test may have left
    with shop.engine.connect() as late:
        pending = late.begin()
        first = publish_in(late, message("late")).id  # the lowest id, not committed yet
        with shop.engine.begin() as connection:
            ours = [publish_in(connection, message(f"w:{n}")).id for n in (0, 1)]
        try:
            with shop.store.outbox.head(100) as held:
                assert held is not None and [r.task_id for r in held.rows] == ours
                pending.commit()
                with shop.engine.begin() as connection:
                    third = publish_in(connection, message("w:2")).id
                with shop.store.outbox.head(100) as other:
                    assert other is not None
                    assert [r.task_id for r in other.rows] == [first]  # not the third
            assert waiting(shop) == [first, *ours, third]  # none published: all stay
        finally:
            with shop.engine.begin() as connection:
                connection.execute(sa.delete(outbox))


def test_the_relay_says_one_line_per_event(shop: Shop, caplog: pytest.LogCaptureFixture) -> None:
    """A worker's relay logs on ``celery_reliable.outbox``: started and stopped at INFO,
    each batch at DEBUG."""
    with caplog.at_level(logging.DEBUG, logger="celery_reliable.outbox"):
        with shop.engine.begin() as connection:
            publish_in(connection, shop.app.signature("ob.none", ("x",), queue="nobody"))
        stop = threading.Event()
        relay = Relay(shop.app, shop.store, poll_interval=0.2)
        thread = threading.Thread(target=relay.run, args=(stop,))
        thread.start()
        wait_until(lambda: relay.published == 1, "the message published")
        stop.set()
        thread.join(10)
    said = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.outbox"]
    assert said[0].startswith("celery_reliable outbox: relay started: outbox in ")
    assert said[1].startswith("celery_reliable outbox: published 1 message (outbox ids ")
    assert said[-1] == "celery_reliable outbox: relay stopped (1 message published by it)"


def test_a_worker_samples_the_outbox_s_depth_and_oldest_age(shop: Shop) -> None:
    """What the StatsD observer's gauges are given (the pipeline test follows them
    into Graphite): two messages waiting, the oldest written a moment ago; then none."""
    from celery_reliable.worker.sampler import QueueDepthSampler

    seen: list[tuple[int, float]] = []
    sampler = QueueDepthSampler(
        shop.app, [], 1.0, lambda depths: None, outbox=lambda *g: seen.append(g), store=shop.store
    )
    with shop.engine.begin() as connection:
        for n in range(2):
            publish_in(connection, shop.app.signature("ob.none", (n,), queue="nobody"))
    sampler.sample_outbox()
    with relaying(shop.app, shop.store):
        wait_until(lambda: waiting(shop) == [], "the outbox emptied")
    sampler.sample_outbox()
    (depth, age), after = seen
    assert depth == 2 and 0 <= age < 30
    assert after == (0, 0.0)


def test_report_says_how_the_outbox_stands(shop: Shop) -> None:
    """``celery reliable report``'s outbox line, in Markdown and JSON: two messages
    waiting, the oldest written 95 s ago; then, a relay running, none, and on
    PostgreSQL that relay seen listening (SQLite's relays poll, unseen)."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from celery_reliable.cli import reliable
    from celery_reliable.store.schema import outbox

    def report(*args: str) -> str:
        done = CliRunner().invoke(
            reliable, ["report", "ob.mark", *args], obj=SimpleNamespace(app=shop.app)
        )
        assert done.exit_code == 0, done.output
        return str(done.output)

    with shop.engine.begin() as connection:
        connection.execute(sa.delete(outbox))  # what an earlier test may have left
        for n in range(2):
            publish_in(connection, shop.app.signature("ob.none", (n,), queue="nobody"))
        written = utcnow().replace(microsecond=0) - timedelta(seconds=95)
        connection.execute(sa.update(outbox).values(created_at=written))
    postgresql = shop.store.engine.dialect.name == "postgresql"
    unseen = "relays not seen from SQLite (they poll every 0.2s)"
    line = next(x for x in report().splitlines() if x.startswith("- Outbox"))
    assert line == (
        f"- Outbox (every task's, now): 2 messages wait, the oldest written "
        f"{written.isoformat()}Z ({line.split('(')[2].split(' ago')[0]} ago); "
        f"{'0 relays listening for its commits' if postgresql else unseen}; a relay in each "
        "worker off (reliable_outbox_relay)"
    )
    assert re.fullmatch(r"1m 3[5-9]s", line.split("(")[2].split(" ago")[0]), line
    data = json.loads(report("--json"))["outbox"]
    assert data["depth"] == 2 and data["oldest_at"] == f"{written.isoformat()}Z"
    assert 95 <= data["oldest_age"] < 100
    assert data["relays"] == (0 if postgresql else None)
    assert data["relay_in_workers"] is False and data["poll_interval"] == 0.2

    with relaying(shop.app, shop.store):
        wait_until(lambda: waiting(shop) == [], "the outbox emptied")
        if postgresql:
            wait_until(lambda: shop.store.outbox.status(relays=True).relays == 1, "1 relay")
        line = next(x for x in report().splitlines() if x.startswith("- Outbox"))
    seen = "1 relay listening for its commits" if postgresql else unseen
    assert line == (
        f"- Outbox (every task's, now): empty; {seen}; a relay in each worker off "
        "(reliable_outbox_relay)"
    )
    # docs/cli.md's example line has the shape of the report's.
    shown = marked_block(DOCS / "cli.md", "report-outbox-line", "text").strip()
    assert re.fullmatch(
        r"- Outbox \(every task's, now\): \d+ messages wait, the oldest written "
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(\d+m \d+s ago\); \d+ relays? listening for its "
        r"commits; a relay in each worker (on|off) \(reliable_outbox_relay\)",
        shown,
    ), shown


def test_on_rabbitmq_the_relay_publishes_with_confirms(
    rabbitmq_url: str, redis_url: str, shop: Shop
) -> None:
    """RabbitMQ: the relay's channel is in confirm mode (a publish returns once the
    broker has the message), and the message arrives as written."""
    from tests.support.celery_apps import new_amqp_app

    app = new_amqp_app(rabbitmq_url, redis_url, "outbox-amqp", reliable_database_url=shop.store.url)
    try:
        store = store_for(app)
        assert store is not None
        with shop.engine.begin() as connection:
            sent = publish_in(connection, app.signature("ob.none", ("amqp",)))
        lines = Lines()
        relay = Relay(app, store, poll_interval=0.2, report=lines)
        stop = threading.Event()
        thread = threading.Thread(target=relay.run, args=(stop,), daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: relay.published == 1, "the message published", seen=lambda: lines.said
            )
            assert relay._producer is not None
            assert relay._producer.channel._confirm_selected  # py-amqp's confirm mode
        finally:
            stop.set()
            thread.join(10)
        with app.connection_for_read() as connection:
            queue = connection.SimpleQueue(app.conf.task_default_queue)
            message = queue.get(timeout=10)
            assert message.headers["id"] == sent.id
            assert message.headers["reliable_outbox"] == 1
            message.ack()
            queue.close()
    finally:
        app.close()
