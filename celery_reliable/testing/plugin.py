"""The pytest plugin of celery_reliable (entry point ``pytest11``: loaded by pytest
whenever celery-reliable is installed; ``-p no:celery_reliable`` turns it off).

Fixtures:

``reliable_app``
    The Celery app under test: ``celery.current_app`` unless the project overrides the
    fixture (``@pytest.fixture def reliable_app(): return my_project.celery.app``).
``reliable_db``
    A fresh embedded store (SQLite in the test's ``tmp_path``) for ``reliable_app``,
    whatever store the app used before: receipts, dead letters and unique locks start
    empty, and a charge made in one test is never a DUPLICATE of another test's. The
    app's own setting comes back after the test. Yields the
    :class:`~celery_reliable.store.Store`.

Around every test it keeps what is published (``celery_reliable.testing.capture``),
for ``assert_enqueued``, ``refute_enqueued``, ``all_enqueued`` and ``drain``.

It defines no Celery worker or app fixture, so it lives beside ``celery.contrib.pytest``
and pytest-celery alike.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_reliable.testing import capture, reset

_UNSET = object()


@pytest.fixture
def reliable_app() -> Celery:
    """The app ``reliable_db`` gives a fresh store; override it to name yours."""
    from celery import current_app

    app: Celery = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


@pytest.fixture
def reliable_db(reliable_app: Celery, tmp_path: Path) -> Iterator[Any]:
    """A fresh embedded store for ``reliable_app``, for this test only."""
    from celery_reliable.store import store_for

    app = reliable_app
    conf = app.conf
    prefixed = f"{conf.prefix}RELIABLE_DATABASE_URL" if conf.prefix else None
    key = prefixed if prefixed and prefixed in conf else "reliable_database_url"
    before = conf.get(key, _UNSET) if key in conf else _UNSET
    conf[key] = f"sqlite:///{tmp_path / 'celery_reliable.sqlite3'}"
    reset(app)
    store = store_for(app)
    assert store is not None
    store.ensure_schema()
    try:
        yield store
    finally:
        reset(app)
        if before is _UNSET:
            conf.pop(key, None)
        else:
            conf[key] = before


@pytest.fixture(autouse=True)
def _reliable_capture(reliable_app: Celery) -> Iterator[None]:
    """Each test sees only what it published; ``drain`` runs it with ``reliable_app``."""
    with capture(reliable_app):
        yield
