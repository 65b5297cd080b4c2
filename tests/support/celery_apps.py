"""Celery apps for the tests that run their worker in this process: each on a Redis
database (or RabbitMQ queue) no other test uses, with a store of its own."""

from __future__ import annotations

import atexit
import contextlib
import importlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from celery import Celery

from tests.support import servers
from tests.support.apps.config import OwnTasksCelery

if TYPE_CHECKING:
    from celery_reliable.store import Store

_databases = itertools.count(1)
_pg_databases = itertools.count(1)

_store_dir = tempfile.mkdtemp(prefix="reliable-test-store-")
atexit.register(shutil.rmtree, _store_dir, True)


def fresh_postgres_database(server_url: str) -> str:
    """A new, empty database on the session's server; returns its URL."""
    import sqlalchemy as sa

    name = f"reliable_{next(_pg_databases)}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


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
    app = OwnTasksCelery(name, broker=url, backend=url, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        result_expires=3600,
        broker_transport_options={"visibility_timeout": 30},
        **conf,
    )
    return app


def new_amqp_app(rabbitmq_url: str, redis_url: str, name: str, **conf: Any) -> Celery:
    """Like :func:`new_app`, with RabbitMQ as the broker (results stay on Redis): its
    own queue, so that test modules never share one."""
    app = new_app(redis_url, name, **conf)
    db = app.conf.broker_url.rsplit("/", 1)[1]
    app.conf.broker_url = rabbitmq_url
    app.conf.broker_transport_options = {}
    app.conf.task_default_queue = f"{name}-{db}"
    return app


def helper_app_module(module: str, env: dict[str, str], store_url: str) -> ModuleType:
    """The helper app ``module`` (``tests.support.apps.*``) imported in the test process
    to publish, on the broker and store of ``env`` that its worker processes get: the
    store made afresh (a module of the other store parameter may have used another) and
    migrated to its head before any worker uses it (PostgreSQL)."""
    from celery_reliable.store import migrate, store_for
    from celery_reliable.testing import reset

    os.environ.update(env)
    helper = importlib.import_module(module)
    helper.app.conf.reliable_database_url = store_url
    reset(helper.app)
    store = store_for(helper.app)
    assert store is not None
    migrate.upgrade(store.engine)
    return helper


@contextlib.contextmanager
def migrated_store(store_url: str, name: str) -> Iterator[Store]:
    """The store at ``store_url`` of an app of its own, migrated to its head; disposed
    of after (tests of the store's own reads and writes, without a worker)."""
    from celery_reliable.store import migrate, store_for

    app = Celery(name, set_as_current=False)
    app.conf.update(reliable_database_url=store_url)
    found = store_for(app)
    assert found is not None
    migrate.upgrade(found.engine)
    try:
        yield found
    finally:
        found.dispose()
