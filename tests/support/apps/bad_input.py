"""The app a real ``celery worker`` process runs for the bad-input rows that need a
worker of their own: exceptions crossing the prefork pool (and a pickle result
backend), a store that cannot be reached, a StatsD host that does not resolve.

Configured by the environment (read at import, in the worker and in the test):
``RELIABLE_TEST_BROKER``, ``RELIABLE_TEST_STORE`` (a database URL),
``RELIABLE_TEST_RESULT_SERIALIZER`` and ``RELIABLE_TEST_STATSD_HOST`` (optional).
"""

from __future__ import annotations

import os
import threading

from celery_reliable import ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.errors import StoreUnavailable
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

app = helper_app(
    "bad_input_app",
    defaults={"reliable_statsd_host": None, "reliable_statsd_port": 8125},
    worker_prefetch_multiplier=1,
    result_serializer=os.environ.get("RELIABLE_TEST_RESULT_SERIALIZER", "json"),
    result_accept_content=["json", "pickle"],
)

record_outcomes_to(app.conf.broker_url)


class NeedsArguments(Exception):
    """Pickles, but cannot be unpickled: pickle calls ``NeedsArguments(message)``."""

    def __init__(self, order: int, why: str) -> None:
        super().__init__(f"order {order}: {why}")


class HoldsALock(Exception):
    """Cannot be pickled at all."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


@app.task(base=ReliableTask, name="bi.needs_arguments")
@retry_on(NeedsArguments, wait=fixed(0.1), attempts=2)
def needs_arguments(order: int) -> None:
    raise NeedsArguments(order, "card declined")


@app.task(base=ReliableTask, name="bi.holds_a_lock")
@retry_on(HoldsALock, wait=fixed(0.1), attempts=2)
def holds_a_lock() -> None:
    raise HoldsALock("a lock cannot be pickled")


@app.task(base=ReliableTask, name="bi.unpicklable_unclassified")
def unpicklable_unclassified() -> None:
    raise HoldsALock("nobody declared me")


@app.task(base=ReliableTask, name="bi.charge", timeout=5, idempotency_key="charge:{order}")
@retry_on(StoreUnavailable, wait=fixed(0.1), attempts=2)  # the built-in rule waits minutes
def charge(order: int) -> str:
    return f"charged {order}"


@app.task(base=ReliableTask, name="bi.ok")
def ok() -> str:
    return "ok"
