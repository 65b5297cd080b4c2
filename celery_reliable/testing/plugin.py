"""The pytest plugin of celery_reliable (entry point ``pytest11``: loaded by pytest
whenever celery-reliable is installed; ``-p no:celery_reliable`` turns it off).

Fixtures:

``reliable_app``
    The Celery app under test: ``celery.current_app`` unless the project overrides the
    fixture (``@pytest.fixture def reliable_app(): return my_project.celery.app``).
``reliable_db``
    A fresh store for ``reliable_app``, whatever store the app used before: receipts,
    dead letters, unique locks and history start empty, and a charge made in one test
    is never a DUPLICATE of another test's. An embedded SQLite store in the test's
    ``tmp_path``, and the app's own setting back after the test; or, when the app
    stores in Django's database (``reliable_database_url = "django"``), that
    database's store tables emptied. Yields the :class:`~celery_reliable.store.Store`.
``statsd_lines``
    The StatsD lines ``reliable_app`` sends during the test, received on a real UDP
    socket (:class:`~celery_reliable.testing.statsd.StatsdLines`).
``sentry_events``
    The events the real Sentry SDK would send during the test, kept by a transport
    (:class:`~celery_reliable.testing.sentry.SentryEvents`).

Around every test it keeps what is published (``celery_reliable.testing.capture``),
for ``assert_enqueued``, ``refute_enqueued``, ``all_enqueued`` and ``drain``.

``--reliable-rules[=strict]`` prints which declared rule of each ReliableTask the
session exercised, and under ``strict`` fails it when one never was
(``celery_reliable.testing.rule_coverage``).

It defines no Celery worker or app fixture, so it lives beside ``celery.contrib.pytest``
and pytest-celery alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_reliable.testing import capture, reset

_UNSET = object()


@contextmanager
def _setting(app: Celery, name: str, value: Any) -> Iterator[None]:
    """``app.conf[name] = value`` for the block, under the name the app's settings use
    (``CELERY_RELIABLE_...`` when it was configured with a namespace)."""
    conf = app.conf
    prefixed = f"{conf.prefix}{name.upper()}" if conf.prefix else None
    key = prefixed if prefixed and prefixed in conf else name
    before = conf.get(key, _UNSET) if key in conf else _UNSET
    conf[key] = value
    try:
        yield
    finally:
        if before is _UNSET:
            conf.pop(key, None)
        else:
            conf[key] = before


def pytest_addoption(parser: pytest.Parser) -> None:
    from celery_reliable.testing.rule_coverage import REPORT, STRICT

    parser.getgroup("celery_reliable").addoption(
        "--reliable-rules",
        nargs="?",
        const=REPORT,
        default=None,
        choices=(REPORT, STRICT),
        metavar="strict",
        help="print which declared rule (retry_on, discard_on, cancel_on, autoretry_for, "
        "idempotency_key) of each ReliableTask the session exercised; =strict also fails "
        "the session when one never was",
    )


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("reliable_rules", None)
    if mode is None or hasattr(config, "workerinput"):
        return  # off; or a pytest-xdist worker, refused by the controller below
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError(
            "--reliable-rules hears the executions of one pytest process; pytest-xdist "
            "spreads them over several: run it without -n"
        )
    from celery_reliable.testing.rule_coverage import RuleCoveragePlugin

    config.pluginmanager.register(RuleCoveragePlugin(mode), "celery_reliable_rule_coverage")


def _forget_observers(app: Celery) -> None:
    """Settings and observers read again at the next execution (the store is kept)."""
    from celery_reliable.config import forget_settings
    from celery_reliable.wiring import forget_observers

    forget_observers(app)
    forget_settings(app)


@pytest.fixture
def reliable_app() -> Celery:
    """The app the fixtures set up; override it to name yours."""
    from celery import current_app

    app: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


@pytest.fixture
def reliable_db(reliable_app: Celery, tmp_path: Path) -> Iterator[Any]:
    """A fresh store for ``reliable_app``, for this test only."""
    from celery_reliable.config import settings_for
    from celery_reliable.django import django_alias

    app = reliable_app
    reset(app)
    url = settings_for(app).database_url
    if url is not None and django_alias(url) is not None:
        yield _emptied_store(app)
        reset(app)
        return
    with _setting(app, "reliable_database_url", f"sqlite:///{tmp_path / 'reliable.sqlite3'}"):
        reset(app)
        try:
            yield _emptied_store(app)
        finally:
            reset(app)


def _emptied_store(app: Celery) -> Any:
    from sqlalchemy import delete

    from celery_reliable.store import store_for
    from celery_reliable.store.schema import metadata

    store = store_for(app)
    assert store is not None
    store.ensure_schema()
    with store.engine.begin() as connection:
        for table in metadata.sorted_tables:
            connection.execute(delete(table))
    return store


@pytest.fixture
def statsd_lines(reliable_app: Celery) -> Iterator[Any]:
    """The StatsD lines ``reliable_app`` sends in this test, from a real UDP socket."""
    from celery_reliable.testing.statsd import StatsdLines

    lines = StatsdLines()
    app = reliable_app
    try:
        with (
            _setting(app, "reliable_statsd_host", lines.host),
            _setting(app, "reliable_statsd_port", lines.port),
        ):
            _forget_observers(app)
            try:
                yield lines
            finally:
                _forget_observers(app)
    finally:
        lines.close()


@pytest.fixture
def sentry_events() -> Iterator[Any]:
    """The events the real Sentry SDK would send in this test."""
    from celery_reliable.testing.sentry import capture_sentry_events

    with capture_sentry_events() as events:
        yield events


@pytest.fixture(autouse=True)
def _reliable_capture(reliable_app: Celery) -> Iterator[None]:
    """Each test sees only what it published; ``drain`` runs it with ``reliable_app``."""
    with capture(reliable_app):
        yield
