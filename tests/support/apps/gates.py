"""The app ``celery -A tests.support.apps.gates reliable check|report`` audits: one
task per way of standing at the gates."""

from __future__ import annotations

import json
import os

from celery_reliable import ReliableTask, cancel_on, discard_on, retry_on
from tests.support.apps.config import helper_app

app = helper_app(
    "gates_app",
    reliable_statsd_host="127.0.0.1",
    broker_transport_options={"visibility_timeout": 300},
    # Without the keepalive, a task longer than the visibility timeout misses `delivery`.
    reliable_keepalive=False,
    reliable_history_interval=3600,
)
if os.environ.get("RELIABLE_TEST_TYPO"):
    app.conf.reliable_statsd_hots = "127.0.0.1"
if os.environ.get("RELIABLE_TEST_NO_STATSD"):
    app.conf.reliable_statsd_host = None  # a fact of the project, not of each task
if os.environ.get("RELIABLE_TEST_WAIVE"):
    app.conf.reliable_waive = json.loads(os.environ["RELIABLE_TEST_WAIVE"])

SAFE = {"acks_late": True, "reject_on_worker_lost": True}


class CardDeclined(Exception):
    pass


@app.task(
    base=ReliableTask, name="gates.charge", timeout=30, idempotency_key="c:{order_id}", **SAFE
)
@retry_on(ConnectionError, attempts=5)
@discard_on(CardDeclined)
def charge(order_id: int) -> int:
    if order_id < 0:
        raise CardDeclined(f"card of order {order_id} declined")
    return order_id


@app.task(
    base=ReliableTask,
    name="gates.lookup",
    timeout=10,
    waive={"idempotency": "reads only; running twice is harmless"},
    **SAFE,
)
@cancel_on(LookupError)
def lookup(order_id: int) -> None: ...


@app.task(base=ReliableTask, name="gates.sloppy_task_with_a_name_long_enough_to_be_folded_by_rich")
def sloppy() -> None: ...


@app.task(base=ReliableTask, name="gates.slow", timeout=600, idempotency_key="s:{n}", **SAFE)
@retry_on(ConnectionError)
def slow(n: int) -> None: ...


if os.environ.get("RELIABLE_TEST_AUTORETRY"):
    # Moved to base=ReliableTask with Celery's own retry options left as they were, as
    # docs/migrating.md tells users to start.
    @app.task(
        base=ReliableTask,
        name="gates.legacy",
        timeout=30,
        autoretry_for=(Exception,),
        retry_backoff=True,
        max_retries=5,
        waive={"idempotency": "writes nothing"},
        **SAFE,
    )
    def legacy() -> None: ...

    @app.task(
        base=ReliableTask,
        name="gates.forever",
        timeout=30,
        autoretry_for=(ConnectionError,),
        max_retries=None,
        waive={"idempotency": "writes nothing"},
        **SAFE,
    )
    def forever() -> None: ...
