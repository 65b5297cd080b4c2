"""The atomic fetch on a real Redis: a message is in its queue or in the ``unacked``
hash at every instant, so a consumer that dies right after fetching loses nothing
(kombu's BRPOP loses it, shown side by side); acks, no-ack consumers, the idle wait,
a flushed script cache, priorities, other queues and a global key prefix."""

from __future__ import annotations

import contextlib
import json
import select
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Consumer, Exchange, Producer, Queue

import celery_reliable.delivery.atomic_fetch
from tests.support.celery_apps import new_redis_db
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

#: kombu's own Redis transport, by class (an embedded worker earlier in this process
#: may have pointed the name "redis" at ours).
KOMBU = "kombu.transport.redis:Transport"


@pytest.fixture
def url(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture
def db(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    yield client
    client.close()


def queue(name: str) -> Queue:
    return Queue(name, Exchange(name), name, max_priority=9)


def publish(url: str, name: str, body: Any, **options: Any) -> None:
    with Connection(url) as connection:
        q = queue(name)
        Producer(connection).publish(
            body, exchange=q.exchange, routing_key=name, declare=[q], **options
        )


def consumer_connection(url: str, transport: str, **options: Any) -> Connection:
    return Connection(url, transport=transport, transport_options=options)


def fetch_and_die(connection: Connection, q: Queue) -> None:
    """Start one fetch, let Redis answer it, and drop the connection without reading
    the answer: a worker SIGKILLed between the pop and anything after it."""
    with Consumer(connection, [q], accept=["json"]):
        channel = connection.default_channel
        connection.transport.cycle.on_poll_start()  # sends BRPOP, or our script
        sock = channel.client.connection._sock
        readable, _, _ = select.select([sock], [], [], 5)
        assert readable, "Redis did not answer the fetch"
        channel.client.connection.disconnect()


@pytest.mark.parametrize(
    ("transport", "kept"),
    [("reliable-redis", True), (KOMBU, False)],
    ids=["atomic-fetch", "kombu-brpop"],
)
def test_a_consumer_dead_right_after_its_fetch_loses_nothing(
    url: str, db: redis.Redis, transport: str, kept: bool
) -> None:
    publish(url, "jobs", {"n": 1})
    connection = consumer_connection(url, transport)
    fetch_and_die(connection, queue("jobs"))
    assert db.llen("jobs") == 0  # popped either way
    if not kept:
        # kombu's gap: the message is gone from Redis entirely.
        assert db.hlen("unacked") == 0
        return
    [tag] = db.hkeys("unacked")
    assert db.zscore("unacked_index", tag) is not None
    # Its entry is kombu's own: kombu's restore puts it back on its queue.
    with consumer_connection(url, KOMBU, visibility_timeout=0) as rescuer:
        rescuer.default_channel.qos.restore_visible()
    assert db.llen("jobs") == 1
    assert db.hlen("unacked") == 0
    with consumer_connection(url, "reliable-redis") as again:
        assert drain_one(again, queue("jobs"))[0] == {"n": 1}


def drain_one(
    connection: Connection, q: Queue, *, no_ack: bool = False, ack: bool = True, timeout: float = 5
) -> tuple[Any, Any]:
    got: list[tuple[Any, Any]] = []

    def on_message(body: Any, message: Any) -> None:
        got.append((body, message))
        if ack and not no_ack:
            message.ack()

    with Consumer(connection, [q], accept=["json"], no_ack=no_ack, callbacks=[on_message]):
        connection.drain_events(timeout=timeout)
    [(body, message)] = got
    return body, message


def drain_until(connection: Connection, got: list[Any], count: int, timeout: float = 10) -> None:
    def drained() -> bool:
        with contextlib.suppress(TimeoutError):
            connection.drain_events(timeout=0.2)
        return len(got) >= count

    wait_until(
        drained, f"{count} message(s) delivered", timeout=timeout, interval=0, seen=lambda: got
    )


def test_the_entry_is_written_once_and_removed_at_ack(url: str, db: redis.Redis) -> None:
    publish(url, "jobs", {"n": 2})
    with consumer_connection(url, "reliable-redis") as connection:
        body, message = drain_one(connection, queue("jobs"), ack=False)
        assert body == {"n": 2}
        raw = db.hget("unacked", message.delivery_tag)
        assert raw is not None
        payload, exchange, routing_key = json.loads(raw)
        assert (exchange, routing_key) == ("jobs", "jobs")
        assert payload["properties"]["delivery_tag"] == message.delivery_tag
        message.ack()
    assert db.hlen("unacked") == 0
    assert db.zcard("unacked_index") == 0


def test_a_no_ack_consumer_leaves_no_entry(url: str, db: redis.Redis) -> None:
    """Celery's mingle and control replies consume with no_ack: nobody would ack an
    entry, and the restore would bring the reply back."""
    publish(url, "replies", {"n": 3})
    with consumer_connection(url, "reliable-redis") as connection:
        body, _ = drain_one(connection, queue("replies"), no_ack=True)
    assert body == {"n": 3}
    assert db.hlen("unacked") == 0


@pytest.fixture
def long_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle waits of 30 s instead of 1 s: a message taken within 10 s woke the wait."""
    monkeypatch.setattr(celery_reliable.delivery.atomic_fetch, "WAIT_SECONDS", 30.0)


@pytest.mark.usefixtures("long_waits")
def test_an_idle_consumer_wakes_when_a_message_is_published(url: str) -> None:
    """The idle wait (BLMOVE on the queue's key) returns at the publish, not at the
    end of its 30 s timeout."""
    with consumer_connection(url, "reliable-redis", polling_interval=30) as connection:
        got: list[Any] = []
        with Consumer(
            connection,
            [queue("idle")],
            accept=["json"],
            callbacks=[lambda b, m: (got.append(b), m.ack())],
        ):
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.5)  # nothing yet: now waiting
            publish(url, "idle", {"n": 4})
            connection.drain_events(timeout=10)
    assert got == [{"n": 4}]


def test_other_queues_and_priorities_are_fetched_within_the_wait(url: str, db: redis.Redis) -> None:
    """Only one key is watched at a time; the others are fetched after each wait
    (brpop_timeout, here 1 s) — and in kombu's order: priority first."""
    with consumer_connection(url, "reliable-redis", polling_interval=1) as connection:
        got: list[Any] = []
        queues = [queue("first"), queue("second")]
        with Consumer(
            connection, queues, accept=["json"], callbacks=[lambda b, m: (got.append(b), m.ack())]
        ):
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.5)
            publish(url, "second", {"n": "low"})
            publish(url, "second", {"n": "urgent"}, priority=0)
            publish(url, "first", {"n": "prioritised"}, priority=5)
            drain_until(connection, got, 3)
    assert sorted(b["n"] for b in got) == ["low", "prioritised", "urgent"]
    assert db.hlen("unacked") == 0


def test_a_flushed_script_cache_is_reloaded(url: str, db: redis.Redis) -> None:
    """A Redis restart empties the script cache: the next fetch loads it again."""
    with consumer_connection(url, "reliable-redis") as connection:
        publish(url, "jobs", {"n": 5})
        assert drain_one(connection, queue("jobs"))[0] == {"n": 5}
        db.script_flush()
        publish(url, "jobs", {"n": 6})
        got: list[Any] = []
        with Consumer(
            connection,
            [queue("jobs")],
            accept=["json"],
            callbacks=[lambda b, m: (got.append(b), m.ack())],
        ):
            drain_until(connection, got, 1)
    assert got == [{"n": 6}]
    assert db.hlen("unacked") == 0


def test_a_global_key_prefix_applies_to_every_key(url: str, db: redis.Redis) -> None:
    options = {"global_keyprefix": "shop:"}
    with Connection(url, transport_options=options) as producer:
        q = queue("jobs")
        Producer(producer).publish({"n": 7}, exchange=q.exchange, routing_key="jobs", declare=[q])
    assert db.llen("shop:jobs") == 1
    with consumer_connection(url, "reliable-redis", **options) as connection:
        body, message = drain_one(connection, queue("jobs"), ack=False)
        assert body == {"n": 7}
        assert db.hexists("shop:unacked", message.delivery_tag)
        assert db.zscore("shop:unacked_index", message.delivery_tag) is not None
        message.ack()
    assert db.hlen("shop:unacked") == 0
    assert not db.exists("unacked")


def test_a_worker_with_a_reliable_task_fetches_atomically(redis_url: str) -> None:
    from celery_reliable import ReliableTask
    from celery_reliable.delivery.atomic_fetch import Transport
    from tests.support.celery_apps import new_app
    from tests.support.workers import embedded_worker

    app = new_app(redis_url, "atomic-fetch-worker", task_acks_late=True)
    broker = redis.Redis.from_url(app.conf.broker_url)

    @app.task(base=ReliableTask, shared=False)
    def held() -> bool:
        # Running under acks_late: the entry the fetch script wrote is still there.
        return broker.hlen("unacked") == 1

    with embedded_worker(app, concurrency=1) as worker:
        assert type(worker.consumer.connection.transport) is Transport
        assert held.delay().get(timeout=20) is True
        assert celery_reliable.delivery.atomic_fetch.installed()
    assert broker.hlen("unacked") == 0
    broker.close()


@pytest.mark.usefixtures("long_waits")
def test_the_idle_wait_watches_the_key_messages_came_from(url: str) -> None:
    """Messages sent with a priority land on the priority's own key: after one came
    from there, the idle wait watches that key, and the next is taken at its publish."""
    with consumer_connection(url, "reliable-redis", polling_interval=30) as connection:
        got: list[Any] = []
        with Consumer(
            connection, [queue("prio")], accept=["json"],
            callbacks=[lambda b, m: (got.append(b), m.ack())],
        ):  # fmt: skip
            publish(url, "prio", {"n": 1}, priority=5)
            drain_until(connection, got, 1)
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.5)  # idle now, watching prio's key 5
            publish(url, "prio", {"n": 2}, priority=5)
            connection.drain_events(timeout=10)
    assert got == [{"n": 1}, {"n": 2}]


def test_polling_interval_zero_does_not_block_on_one_key(url: str) -> None:
    """kombu takes polling_interval 0 as "block forever": on one key of several that
    would starve the others (and hang the channel's close)."""
    with consumer_connection(url, "reliable-redis", polling_interval=0) as connection:
        got: list[Any] = []
        with Consumer(
            connection, [queue("first"), queue("second")], accept=["json"],
            callbacks=[lambda b, m: (got.append(b), m.ack())],
        ):  # fmt: skip
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.5)
            publish(url, "second", {"n": 1})
            drain_until(connection, got, 1, timeout=10)
    assert got == [{"n": 1}]


def held_back_fetch(connection: Connection, q: Queue) -> tuple[Any, Any, Any]:
    """Send a fetch and let Redis answer it, without reading the answer: what kombu
    does while the worker has no credit (an ETA came due, a rate limit)."""
    consumer = Consumer(connection, [q], accept=["json"])
    consumer.consume()
    channel = connection.default_channel
    connection.transport.cycle.on_poll_start()
    sock = channel.client.connection._sock
    assert select.select([sock], [], [], 5)[0], "Redis did not answer the fetch"
    return consumer, channel, sock


def test_a_reply_read_late_after_a_rescue_is_not_delivered_twice(url: str, db: redis.Redis) -> None:
    publish(url, "jobs", {"n": 1})
    got: list[Any] = []
    with consumer_connection(url, "reliable-redis") as connection:
        consumer, channel, _ = held_back_fetch(connection, queue("jobs"))
        consumer.register_callback(lambda b, m: got.append(b))
        # Time itself is the subject: the held fetch ages past what a renewal covers.
        time.sleep(celery_reliable.delivery.atomic_fetch.WAIT_SECONDS + 2.5)
        # The worker renewed nothing it had not read; another worker's rescue:
        with consumer_connection(url, KOMBU, visibility_timeout=2) as rescuer:
            rescuer.default_channel.qos.restore_visible()
        assert db.llen("jobs") == 1
        with pytest.raises(virtual_empty()):
            channel._brpop_read()  # credit is back: the held reply is read now
        consumer.cancel()
    assert got == []
    with consumer_connection(url, "reliable-redis") as other:
        assert drain_one(other, queue("jobs"))[0] == {"n": 1}
    assert db.hlen("unacked") == 0


def test_a_reply_read_late_and_not_rescued_is_delivered_and_renewed(
    url: str, db: redis.Redis
) -> None:
    publish(url, "jobs", {"n": 2})
    got: list[Any] = []
    with consumer_connection(url, "reliable-redis") as connection:
        consumer, channel, _ = held_back_fetch(connection, queue("jobs"))
        consumer.register_callback(lambda b, m: (got.append(b), m.ack()))
        [tag] = db.hkeys("unacked")
        fetched_at = db.zscore("unacked_index", tag)
        # Time itself is the subject: the held fetch ages past what a renewal covers.
        time.sleep(celery_reliable.delivery.atomic_fetch.WAIT_SECONDS + 2.5)
        assert channel._brpop_read() is True
        consumer.cancel()
    assert got == [{"n": 2}]
    assert fetched_at is not None


def virtual_empty() -> type[Exception]:
    from kombu.transport.virtual import Empty

    return Empty


def test_a_readable_connection_with_nothing_asked_reconnects(url: str) -> None:
    """The server closed the idle connection (a Redis timeout, a proxy): kombu reads
    EOF as a connection error and reconnects; so does the atomic fetch, instead of
    answering "empty" to a readable socket for ever."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    with consumer_connection(url, "reliable-redis") as connection:
        publish(url, "jobs", {"n": 3})
        assert drain_one(connection, queue("jobs"))[0] == {"n": 3}
        channel = connection.default_channel
        with pytest.raises(RedisConnectionError):
            channel._brpop_read()
        assert channel.client.connection._sock is None


@pytest.fixture
def restricted_user(redis_url: str) -> Iterator[Any]:
    """A Redis ACL user per test, with what `rules` leave it, and its own URL."""
    admin = redis.Redis.from_url(redis_url)
    made: list[str] = []

    def make(*rules: str) -> str:
        name = f"app{len(made)}-{time.monotonic_ns()}"
        admin.acl_setuser(name, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                          commands=list(rules))  # fmt: skip
        made.append(name)
        host, port = redis_url.split("//", 1)[1].split(":")
        return f"redis://{name}:pw@{host}:{port}"

    yield make
    for name in made:
        admin.acl_deluser(name)
    admin.close()


@pytest.mark.parametrize(
    ("rules", "warning"),
    [
        (("+@all", "-@dangerous"), "refused what the atomic fetch needs"),  # no INFO
        (("+@all", "-evalsha", "-eval", "-script"), "refused what the atomic fetch needs"),
    ],
    ids=["no-info", "no-scripts"],
)
def test_a_redis_user_without_info_or_scripts_fetches_with_brpop(
    url: str, restricted_user: Any, rules: tuple[str, ...], warning: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    db_number = url.rsplit("/", 1)[1]
    user_url = f"{restricted_user(*rules)}/{db_number}"
    publish(url, "jobs", {"n": 4})
    with consumer_connection(user_url, "reliable-redis") as connection:
        assert drain_one(connection, queue("jobs"))[0] == {"n": 4}
    assert warning in caplog.text


def test_a_refused_idle_wait_falls_back_to_polling(
    url: str, restricted_user: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """BLMOVE refused (an ACL here; a Redis out of memory refuses it too): the worker
    polls every second instead, and still gets its messages."""
    user_url = f"{restricted_user('+@all', '-blmove')}/{url.rsplit('/', 1)[1]}"
    with consumer_connection(user_url, "reliable-redis") as connection:
        got: list[Any] = []
        with Consumer(
            connection, [queue("jobs")], accept=["json"],
            callbacks=[lambda b, m: (got.append(b), m.ack())],
        ):  # fmt: skip
            with pytest.raises(TimeoutError):
                connection.drain_events(timeout=0.5)  # the wait is refused here
            publish(url, "jobs", {"n": 5})
            drain_until(connection, got, 1, timeout=10)
    assert got == [{"n": 5}]
    assert "refused the idle wait" in caplog.text


def test_a_payload_python_cannot_decode_is_set_aside(url: str, db: redis.Redis) -> None:
    """Lua's cjson reads JSON that Python refuses (here a control character in a
    string): kept in a list for a human, not left in the unacked hash for every
    worker to fail on in turn."""
    bad = (
        b'{"body": "x\x10", "properties": {"delivery_tag": "t-1", '
        b'"delivery_info": {"exchange": "jobs", "routing_key": "jobs"}}, "headers": {}}'
    )
    db.lpush("jobs", bad)
    publish(url, "jobs", {"n": 6})
    with consumer_connection(url, "reliable-redis") as connection:
        got: list[Any] = []
        with Consumer(
            connection, [queue("jobs")], accept=["json"],
            callbacks=[lambda b, m: (got.append(b), m.ack())],
        ):  # fmt: skip
            drain_until(connection, got, 1, timeout=10)
    assert got == [{"n": 6}]
    assert db.lrange("celery_reliable:unreadable", 0, -1) == [bad]
    assert db.hlen("unacked") == 0
