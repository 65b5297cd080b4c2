"""The app the web-view tests serve with ``celery -A tests.support.apps.web reliable
web`` and run in an embedded worker: charges and shipments a Redis flag makes fail."""

from __future__ import annotations

import contextlib
import json
import os
import time

import redis
from celery.schedules import crontab

from celery_reliable import ReliableTask, discard_on
from tests.support.apps.config import helper_app
from tests.support.waiting import wait_until

app = helper_app(
    "web_app",
    reliable_history_interval=0.5,
    reliable_web_auth=os.environ.get("WEB_TEST_AUTH") or None,
    reliable_web_read_only_auth=os.environ.get("WEB_TEST_READ_ONLY_AUTH") or None,
    broker_connection_retry_on_startup=False,
    broker_connection_max_retries=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Shown on the overview (no beat runs: the test writes the slots' rows itself).
    beat_scheduler="celery_reliable.beat:Scheduler",
    beat_schedule={
        "charge-every-minute": {"task": "web.charge", "schedule": 60.0, "args": (0,)},
        "nightly-shipments": {"task": "web.ship", "schedule": crontab(minute=30, hour=2)},
    },
)

BROKER = app.conf.broker_url

#: Orders whose charge (or shipment) is refused while this set holds them.
REFUSED = "web:refused"
#: Orders charged and shipped, in the order it happened.
CHARGED = "web:charged"
SHIPPED = "web:shipped"


class GatewayRefused(Exception):
    """The payment gateway says no: permanent, so discarded."""


def _redis() -> redis.Redis:
    return redis.Redis.from_url(BROKER)


@app.task(
    base=ReliableTask,
    shared=False,
    name="web.charge",
    timeout=10,
    idempotency_key="charge:{order_id}",
)
@discard_on(GatewayRefused)
def charge(order_id: int) -> str:
    client = _redis()
    if client.sismember(REFUSED, f"charge:{order_id}"):
        raise GatewayRefused(f"card declined for order {order_id}")
    client.rpush(CHARGED, order_id)
    return f"ch_{order_id}"


@app.task(
    base=ReliableTask, shared=False, name="web.ship", timeout=10, waive={"idempotency": "a test"}
)
@discard_on(GatewayRefused)
def ship(order_id: int) -> None:
    client = _redis()
    if client.sismember(REFUSED, f"ship:{order_id}"):
        raise GatewayRefused(f"carrier refused order {order_id}")
    client.rpush(SHIPPED, order_id)


@app.task(
    base=ReliableTask,
    shared=False,
    name="web.store_card",
    timeout=10,
    dead_letter_redact=True,
    waive={"idempotency": "a test"},
)
@discard_on(GatewayRefused)
def store_card(card_number: str) -> None:
    raise GatewayRefused("vault refused the card")


@app.task(
    base=ReliableTask, shared=False, name="web.slow", timeout=30, waive={"idempotency": "a test"}
)
def slow(order_id: int) -> None:
    """Runs until the test lets it end (``web:release:{order_id}``), at most 20 s."""
    client = _redis()
    with contextlib.suppress(AssertionError):  # at most 20 s, released or not
        wait_until(
            lambda: client.exists(f"web:release:{order_id}"),
            f"the test to release order {order_id}",
            timeout=20,
            interval=0.1,
        )


@app.task(
    base=ReliableTask,
    shared=False,
    name="web.import_rows",
    timeout=3600,
    heartbeat_timeout=30,
    waive={"idempotency": "a test"},
)
def import_rows(rows: int) -> None:
    """A long job with a heartbeat: the workers page shows its progress (the test
    writes its beats to the store itself)."""


@app.task(
    base=ReliableTask,
    shared=False,
    bind=True,
    name="web.export",
    timeout=60,
    heartbeat_timeout=30,
    waive={"idempotency": "a test"},
)
def export(self: ReliableTask, order_id: int) -> str:
    """Beats every 0.1 s until the test releases it (``web:release:{order_id}``), at
    most 30 s: a running job the workers page can cancel."""
    client = _redis()
    deadline = time.monotonic() + 30
    while not client.exists(f"web:release:{order_id}") and time.monotonic() < deadline:
        self.heartbeat(progress=None, order=order_id)
        time.sleep(0.1)  # the work between two beats
    return "exported"


#: The summaries ``web.summarize`` got, as JSON (the batches' browser test).
SUMMARIES = "web:summaries"


@app.task(
    base=ReliableTask,
    shared=False,
    name="web.summarize",
    timeout=10,
    waive={"idempotency": "a test"},
)
def summarize(summary: dict[str, object]) -> None:
    """A batch's on_complete: keeps the summary it got."""
    _redis().rpush(SUMMARIES, json.dumps(summary))
