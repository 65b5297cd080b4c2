"""Shared fixtures: a real redis-server for the session, apps on it, embedded workers,
and a recorder of the ``task_outcome`` signal."""

from __future__ import annotations

import atexit
import contextlib
import gc
import itertools
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

# Imported here, in the main thread, before any worker thread exists: CPython 3.11.7
# can fail to compile a module ("AST constructor recursion depth mismatch") when
# pytest rewrites a lazily imported plugin module while other threads run.
import hypothesis  # noqa: F401
import kombu.asynchronous
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_reliable.signals import OutcomeEvent, task_outcome
from tests import servers
from tests.integration.recording import execution_place, in_execution_order

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with servers.redis_server() as url:
        yield url
        # AsyncResults left in reference cycles unsubscribe from Redis when collected:
        # collect them while the server still answers.
        gc.collect()


_store_dir = tempfile.mkdtemp(prefix="reliable-test-store-")
atexit.register(shutil.rmtree, _store_dir, True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (its ``reliable`` database)."""
    with servers.postgres_server() as url:
        yield url


_pg_databases = itertools.count(1)


def fresh_postgres_database(server_url: str) -> str:
    """A new, empty database on the session's server; returns its URL."""
    import sqlalchemy as sa

    name = f"reliable_{next(_pg_databases)}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def fresh_store_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        folder = request.getfixturevalue("tmp_path_factory").mktemp("store")
        return f"sqlite:///{folder}/store.sqlite3"
    return fresh_postgres_database(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str:
    """An empty store database: SQLite and PostgreSQL, one test each."""
    return fresh_store_url(request.param, request)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store_url(request: pytest.FixtureRequest) -> str:
    """Like ``store_url``, shared by a module's tests (for modules with a worker)."""
    return fresh_store_url(request.param, request)


def new_redis_db(redis_url: str) -> str:
    """A Redis database no other test uses: its URL."""
    db = next(_databases)
    if db >= servers.REDIS_DATABASES:
        raise RuntimeError(f"more than {servers.REDIS_DATABASES} Redis databases asked for")
    return f"{redis_url}/{db}"


def new_app(redis_url: str, name: str, **conf: Any) -> Celery:
    """A Celery app on its own Redis database (so test modules never share a queue),
    with its own SQLite store unless ``reliable_database_url`` is given."""
    url = new_redis_db(redis_url)
    db = url.rsplit("/", 1)[1]
    conf.setdefault("reliable_database_url", f"sqlite:///{_store_dir}/{name}-{db}.sqlite3")
    app = Celery(name, broker=url, backend=url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        result_expires=3600,
        broker_transport_options={"visibility_timeout": 30},
        **conf,
    )
    return app


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    """A real RabbitMQ node for the session (started on first use)."""
    with servers.rabbitmq_server() as url:
        yield url


def new_amqp_app(rabbitmq_url: str, redis_url: str, name: str, **conf: Any) -> Celery:
    """Like :func:`new_app`, with RabbitMQ as the broker (results stay on Redis): its
    own queue, so that test modules never share one."""
    app = new_app(redis_url, name, **conf)
    db = app.conf.broker_url.rsplit("/", 1)[1]
    app.conf.broker_url = rabbitmq_url
    app.conf.broker_transport_options = {}
    app.conf.task_default_queue = f"{name}-{db}"
    return app


@pytest.fixture(scope="session")
def make_app(redis_url: str) -> Callable[..., Celery]:
    def factory(name: str, **conf: Any) -> Celery:
        return new_app(redis_url, name, **conf)

    return factory


_worker_running = threading.Lock()


@contextlib.contextmanager
def embedded_worker(app: Celery, concurrency: int = 4, **kwargs: Any) -> Iterator[Any]:
    """A real Celery worker consuming from the real Redis broker, in a thread.

    One at a time: embedded workers share kombu's global event loop, so a second one
    in the same process would steal the first one's events.
    """
    if not _worker_running.acquire(blocking=False):
        raise RuntimeError(
            "an embedded worker is already running in this process: tests that start "
            "their own worker belong in a module without a module-scoped worker"
        )
    try:
        # A worker adopts kombu's global event loop if one exists; on Celery 5.4 and 5.5 that
        # loop keeps the previous worker's timer, so this worker's ETA and countdown
        # messages (every retry) would never run. Each worker gets a loop of its own.
        kombu.asynchronous.set_event_loop(None)
        with start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
            **kwargs,
        ) as worker:
            yield worker
    finally:
        # The worker pointed kombu's "redis" at the atomic fetch for this process: give
        # the name back, so that what runs next sees kombu as its settings say.
        from celery_reliable.delivery import atomic_fetch

        atomic_fetch.uninstall()
        _worker_running.release()


class OutcomeRecorder:
    """Collects every ``task_outcome`` sent in this process, to wait on and assert."""

    def __init__(self) -> None:
        self.events: list[OutcomeEvent] = []
        self._cond = threading.Condition()

    def __call__(self, sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        assert event is not None
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def for_id(self, task_id: str) -> list[OutcomeEvent]:
        """The job's outcomes in the order of its executions (not of their arrival)."""
        with self._cond:
            return self._of(task_id)

    def _of(self, task_id: str) -> list[OutcomeEvent]:
        found = [e for e in self.events if e.task_id == task_id]
        return in_execution_order(found, execution_place)

    def wait_for(
        self,
        task_id: str,
        count: int = 1,
        timeout: float = 20.0,
        until: Callable[[list[OutcomeEvent]], bool] | None = None,
    ) -> list[OutcomeEvent]:
        """Wait until ``task_id`` has ``count`` outcomes (or ``until`` holds); return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._of(task_id)
                done = until(found) if until else len(found) >= count
                if done:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"task {task_id}: waited {timeout}s; outcomes so far: "
                        f"{[(e.outcome.value, e.reason) for e in found]}"
                    )
                self._cond.wait(left)

    def settle(self, seconds: float = 0.5) -> None:
        """Let in-flight work finish, to check that nothing *more* happens."""
        time.sleep(seconds)


@pytest.fixture
def outcomes() -> Iterator[OutcomeRecorder]:
    recorder = OutcomeRecorder()
    task_outcome.connect(recorder, weak=False)
    try:
        yield recorder
    finally:
        task_outcome.disconnect(recorder)


@pytest.fixture
def no_shared_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps built in the test get only their own tasks: not the shared tasks (the
    default of ``@app.task``) that modules imported by earlier tests registered with
    Celery, which it adds to every app finalized afterwards. For tests that audit every
    task of an app."""
    import celery._state

    monkeypatch.setattr(celery._state, "_on_app_finalizers", set())
