"""The app of the no-extras smoke test (``plain_install.py``): one ReliableTask per
outcome on embedded defaults (kombu's SQLAlchemy transport on SQLite, Celery's database
result backend, the SQLite store). Configured from the environment, so that the smoke
test can start it as a real ``celery worker`` with a setting changed."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from celery import Celery

from celery_reliable import Cancel, ReliableTask, Snooze, cancel_on, discard_on, retry_on
from celery_reliable.backoff import fixed

DATA = os.environ.get("PLAIN_DIR", "/tmp/celery-reliable-plain")

app = Celery(
    "plain",
    broker=f"sqla+sqlite:///{DATA}/broker.sqlite3",
    backend=f"db+sqlite:///{DATA}/results.sqlite3",
    set_as_current=False,
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    reliable_database_url=os.environ.get(
        "PLAIN_DATABASE_URL", f"sqlite:///{DATA}/reliable.sqlite3"
    ),
    reliable_statsd_host="127.0.0.1" if os.environ.get("PLAIN_STATSD_PORT") else None,
    reliable_statsd_port=int(os.environ.get("PLAIN_STATSD_PORT") or 8125),
    reliable_statsd_prefix="plain",
)
if os.environ.get("PLAIN_SENTRY"):
    app.conf.reliable_sentry = True


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


class Gone(Exception):
    pass


# Executions so far, per scenario: the worker runs one pool child (-c 1).
_runs: Counter[str] = Counter()


@app.task(base=ReliableTask, bind=True, name="plain.scenario", timeout=30)
@retry_on(Transient, wait=fixed(0.1), attempts=2)
@discard_on(Permanent)
@cancel_on(Gone)
def scenario(self: ReliableTask, name: str) -> Any:
    _runs[name] += 1
    if name == "flaky" and _runs[name] == 1:
        raise Transient("first call fails")
    if name == "busy" and _runs[name] == 1:
        return Snooze(0.1, "busy, later")
    if name == "down":
        raise Transient("always down")
    if name == "invalid":
        raise Permanent("cannot be done")
    if name == "gone":
        raise Gone("nothing to do")
    if name == "refunded":
        return Cancel("refunded")
    if name == "bug":
        raise KeyError("nobody declared this")
    return f"{name}: ok"


@app.task(base=ReliableTask, name="plain.charge", timeout=30, idempotency_key="charge:{order}")
def charge(order: int) -> str:
    return f"charged {order}"
