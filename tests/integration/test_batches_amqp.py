"""Batches on RabbitMQ, with a real embedded worker and a SQLite and a PostgreSQL
store: a member that ends while the store cannot count it, its message delivered
through a queue bound to an exchange of its own by a routing key that is not the
queue's name. The ending waits in the broker, sent the way the member's message came
(its exchange and routing key): a queue named after the routing key would be one
nobody consumes, and the batch would never complete."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from kombu import Exchange, Queue

from celery_reliable import Batch, ReliableTask
from celery_reliable.store import migrate, store_for
from tests.support.celery_apps import new_amqp_app
from tests.support.store_faults import batch_tables_away
from tests.support.waiting import wait_until
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration


def test_an_ending_that_waits_in_the_broker_goes_where_its_member_came_from(
    rabbitmq_url: str, redis_url: str, module_store_url: str, outcomes: Any
) -> None:
    suffix = uuid.uuid4().hex[:8]
    app = new_amqp_app(
        rabbitmq_url, redis_url, f"batches-amqp-{suffix}", reliable_database_url=module_store_url
    )
    exchange = Exchange(f"bt-exchange-{suffix}", type="direct")
    bound = Queue(f"bt-queue-{suffix}", exchange, routing_key=f"bt-key-{suffix}")
    app.conf.task_queues = [bound]
    app.conf.task_default_queue = bound.name
    effects = redis.Redis.from_url(redis_url)
    released, got = f"release:{suffix}", f"got:{suffix}"

    @app.task(base=ReliableTask, name="bta.row", bind=True, timeout=30, shared=False)
    def row(self: ReliableTask, wait: bool = False) -> None:
        if wait:
            wait_until(lambda: effects.exists(released), "the release", timeout=25)

    @app.task(base=ReliableTask, name="bta.collect", bind=True, timeout=30, shared=False)
    def collect(self: ReliableTask, summary: dict[str, Any]) -> None:
        effects.rpush(got, json.dumps(summary))

    store = store_for(app)
    assert store is not None
    migrate.upgrade(store.engine)
    with embedded_worker(app, concurrency=2):
        with Batch(on_complete=collect.s(), app=app) as batch:
            # By the exchange and routing key (Celery sends queue=... through the default
            # exchange, the queue's name as its routing key).
            via = {"exchange": exchange.name, "routing_key": bound.routing_key}
            first = row.apply_async(**via)
            last = row.apply_async((True,), **via)
        outcomes.wait_for(first.id)
        wait_until(
            lambda: (b := store.batches.get(batch.id)) and b.done == 1,
            "the first member counted",
        )
        with batch_tables_away(store):
            effects.set(released, 1)
            outcomes.wait_for(last.id)
        summaries = wait_until(
            lambda: effects.lrange(got, 0, -1), "the batch's callback", timeout=30
        )
        [summary] = [json.loads(x) for x in summaries]
        assert summary["total"] == 2 and summary["outcomes"]["succeeded"] == 2
    # No queue named after the routing key was made for the ending.
    with (
        app.connection_for_write() as connection,
        connection.channel() as channel,
        pytest.raises(Exception, match="NOT_FOUND"),
    ):
        channel.queue_declare(f"bt-key-{suffix}", passive=True)
    effects.delete(released, got)
