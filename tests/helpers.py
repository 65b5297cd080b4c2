"""Small helpers the integration modules share."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import celery
from celery import Celery

from tests.support.workers import embedded_worker

#: The installed Celery's (major, minor): `make compat` runs the suite on 5.4 to 5.7.
CELERY_VERSION: tuple[int, int] = tuple(int(p) for p in celery.__version__.split(".")[:2])  # type: ignore[assignment]


class Calls:
    """Thread-safe count of how many times a task body ran, per test key."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def bump(self, key: str) -> int:
        with self._lock:
            self._counts[key] += 1
            return self._counts[key]

    def __call__(self, key: str) -> int:
        with self._lock:
            return self._counts[key]


def new_key() -> str:
    return uuid.uuid4().hex


def tasks_in(scope: Mapping[str, Any]) -> SimpleNamespace:
    """The Celery tasks among a ``define(app)`` function's locals."""
    return SimpleNamespace(**{n: v for n, v in scope.items() if hasattr(v, "apply_async")})


@contextmanager
def app_with_worker(app: Celery, tasks: SimpleNamespace, **worker: Any) -> Iterator[Any]:
    """The module's ``env``: its app, its tasks, and an embedded worker running them."""
    with embedded_worker(app, **worker):
        yield SimpleNamespace(app=app, **vars(tasks))


def ready_store(app: Celery) -> Any:
    """The app's store with its schema at head: SQLite migrates itself on first use,
    PostgreSQL is migrated here as ``celery reliable db upgrade`` would."""
    from celery_reliable.store import migrate, store_for

    store = store_for(app)
    assert store is not None
    if store.dialect == "sqlite":
        store.ensure_schema()
    else:
        migrate.upgrade(store.engine)
    return store


class Flaky(Exception):
    """What the shared tasks below raise to be retried."""


def every_outcome_tasks(app: Celery, prefix: str, wait: float) -> SimpleNamespace:
    """Tasks that reach every outcome between them, named ``{prefix}.ok`` and so on:
    ``ok``; ``flaky(key)`` (RETRIED once, then SUCCEEDED); ``exhausts`` (RETRIED,
    EXHAUSTED); ``explicit(kind, key)`` (cancel, discard, snooze then succeed, fail,
    or return ``kind``); ``charge(order)`` (keyed: a second call is DUPLICATE).
    Retries and the snooze wait ``wait`` seconds."""
    from celery_reliable import Cancel, Discard, ReliableTask, Snooze, retry_on
    from celery_reliable.backoff import fixed

    calls = Calls()

    @app.task(base=ReliableTask, shared=False, name=f"{prefix}.ok")
    def ok() -> str:
        return "ok"

    @app.task(base=ReliableTask, shared=False, name=f"{prefix}.flaky")
    @retry_on(Flaky, wait=fixed(wait), attempts=2)
    def flaky(key: str) -> str:
        if calls.bump(key) == 1:
            raise Flaky("once")
        return "ok"

    @app.task(base=ReliableTask, shared=False, name=f"{prefix}.exhausts")
    @retry_on(Flaky, wait=fixed(wait), attempts=2)
    def exhausts() -> None:
        raise Flaky("always")

    @app.task(base=ReliableTask, shared=False, name=f"{prefix}.explicit")
    def explicit(kind: str, key: str) -> Any:
        if kind == "cancel":
            return Cancel("not needed")
        if kind == "discard":
            return Discard("bad input")
        if kind == "snooze" and calls.bump(key) == 1:
            return Snooze(wait)
        if kind == "fail":
            raise LookupError("nobody declared me")
        return kind

    @app.task(
        base=ReliableTask, shared=False, name=f"{prefix}.charge", timeout=10,
        idempotency_key="{order}",
    )  # fmt: skip
    def charge(order: str) -> str:
        return order

    return tasks_in(locals())


def dead_letter_fields(**fields: Any) -> dict[str, Any]:
    """The keywords of ``store.dead_letters.write`` for a plain FAILED dead letter
    (a fresh task id each time); ``fields`` replace any of them."""
    row: dict[str, Any] = {
        "task_id": uuid.uuid4().hex,
        "task_name": "contract.failing",
        "queue": "celery",
        "args": [1, "two"],
        "kwargs": {"three": 3},
        "options": {"exchange": "", "routing_key": "celery"},
        "redact": False,
        "outcome": "failed",
        "exc_type": "builtins.ValueError",
        "exc_message": "boom",
        "traceback": 'Traceback (most recent call last):\n  File "x.py"\nValueError: boom\n',
        "reason": "unclassified error",
        "attempts": 1,
    }
    row.update(fields)
    return row
