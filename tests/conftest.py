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

#: The stores a test can be parametrized over (by a fixture's parameter).
STORE_KINDS = frozenset({"sqlite", "postgresql", "redis"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-variants",
        choices=("all", "kept", "others"),
        default="all",
        help="tests marked one_store_in_make_test(kind): every store variant (all, the "
        "default), only the kind kept (kept: `make test`), or only the other variants "
        "(others: `make test-slow`)",
    )


def store_kind(item: pytest.Item) -> str | None:
    """The store a parametrized test runs on (its fixture parameter), if any."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    kinds = [value for value in params.values() if isinstance(value, str) and value in STORE_KINDS]
    return kinds[0] if len(kinds) == 1 else None


#: A rough cost per test, by marker, in seconds: a chaos run, a test with real
#: ``celery worker`` processes, one in a real browser, one with other real servers,
#: any other. (The browser tests, priced as unit tests, ran last: 38 s on one worker
#: while the others had finished.) A test marked ``cost(seconds)`` is priced so.
COSTS = (("chaos", 40.0), ("prefork", 6.0), ("browser", 4.0), ("integration", 0.6))
OTHER_COST = 0.02


def slowest_files_first(items: list[pytest.Item]) -> None:
    """Order the test files by their rough cost, highest first, each file's tests kept
    together and in their order. Under xdist (``--dist loadfile``, without its reorder by
    number of tests) a worker that finishes a file takes the next: the long files start
    early and the short ones fill the end, so the workers finish at about the same time
    instead of one running a long file alone at the end."""
    cost: dict[str, float] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        path = item.nodeid.split("::")[0]
        first.setdefault(path, index)
        names = {marker.name for marker in item.iter_markers()}
        priced = item.get_closest_marker("cost")
        each = (
            float(priced.args[0])
            if priced is not None
            else next((c for name, c in COSTS if name in names), OTHER_COST)
        )
        cost[path] = cost.get(path, 0.0) + each
    items.sort(key=lambda item: (-cost[p := item.nodeid.split("::")[0]], first[p]))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``--store-variants``: a slow test marked ``one_store_in_make_test(kind)`` proves
    the same behaviour on each store; `make test` runs it on ``kind`` only (the store's
    own primitives are proven on every store by ``test_store_contract.py``), and `make
    test-slow` runs the other variants. Under xdist: the slowest files first. And
    ``only_store(kind)`` (``deselect_other_stores_copies``)."""
    deselect_other_stores_copies(config, items)
    if hasattr(config, "workerinput"):  # an xdist worker: each collects, in one order
        slowest_files_first(items)
    mode = config.getoption("--store-variants")
    if mode == "all":
        return
    selected, deselected = [], []
    for item in items:
        marker = item.get_closest_marker("one_store_in_make_test")
        if marker is None:
            keep = mode == "kept"
        else:
            kind = store_kind(item)
            assert kind is not None, f"{item.nodeid}: one_store_in_make_test needs a store param"
            keep = (kind == marker.args[0]) == (mode == "kept")
        (selected if keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


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


def deselect_other_stores_copies(config: pytest.Config, items: list[pytest.Item]) -> None:
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
