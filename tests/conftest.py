"""The suite's fixtures: real servers for the session, apps on them, and a recorder of
the ``task_outcome`` signal. What they are built from lives in ``tests/support/``."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

# Imported here, in the main thread, before any worker thread exists: CPython 3.11.7
# can fail to compile a module ("AST constructor recursion depth mismatch") when
# pytest rewrites a lazily imported plugin module while other threads run.
import hypothesis  # noqa: F401
import pytest
from celery import Celery

from celery_reliable.testing import capture_outcomes
from tests.support import servers
from tests.support.celery_apps import fresh_postgres_database, new_app
from tests.support.outcomes import OutcomeRecorder


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url
        # AsyncResults left in reference cycles unsubscribe from Redis when collected:
        # collect them while the server still answers.
        gc.collect()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (its ``reliable`` database)."""
    with servers.postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A real RabbitMQ node for the session (started on first use)."""
    with servers.rabbitmq_server() as url:
        yield url


def fresh_store_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        folder = request.getfixturevalue("tmp_path_factory").mktemp("store")
        return f"sqlite:///{folder}/store.sqlite3"
    return fresh_postgres_database(request.getfixturevalue("postgres_url"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test marked ``only_store(kind)`` in a module run over several stores proves
    something of that store alone (or brings a store of its own): its copies under the
    other stores would repeat it or prove nothing, so they are deselected (said in the
    summary), not skipped (CI allows no skip)."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("only_store")
        params = getattr(getattr(item, "callspec", None), "params", {})
        kinds = {v for v in params.values() if isinstance(v, str) and v in {"sqlite", "postgresql"}}
        if marker is not None and kinds and marker.args[0] not in kinds:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """An empty store database: SQLite and PostgreSQL, one test each."""
    return fresh_store_url(request.param, request)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store_url(request: pytest.FixtureRequest) -> str:
    """Like ``store_url``, shared by a module's tests (for modules with a worker)."""
    return fresh_store_url(request.param, request)


@pytest.fixture(scope="session")
def make_app(redis_url: str) -> Callable[..., Celery]:
    def factory(name: str, **conf: Any) -> Celery:
        return new_app(redis_url, name, **conf)

    return factory


@pytest.fixture
def outcomes() -> Iterator[OutcomeRecorder]:
    """Every outcome sent in this process during the test (``capture_outcomes``)."""
    with capture_outcomes() as events:
        yield OutcomeRecorder(events)


@pytest.fixture
def no_shared_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps built in the test get only their own tasks: not the shared tasks (the
    default of ``@app.task``) that modules imported by earlier tests registered with
    Celery, which it adds to every app finalized afterwards. For tests that audit every
    task of an app."""
    import celery._state

    monkeypatch.setattr(celery._state, "_on_app_finalizers", set())
