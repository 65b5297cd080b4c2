"""A prefork worker on the embedded defaults (kombu's SQLAlchemy broker and Celery's
database result backend on SQLite files), with StatsD on, so that the queue-depth
sampler runs in the main process while the pool forks."""

from __future__ import annotations

import os

from celery_reliable import ReliableTask
from tests.support.apps.config import helper_app

DATA = os.environ["RELIABLE_TEST_DATA"]

app = helper_app(
    "sqla_broker_app",
    broker=f"sqla+sqlite:///{DATA}/broker.sqlite3",
    backend=f"db+sqlite:///{DATA}/results.sqlite3",
    reliable_database_url=f"sqlite:///{DATA}/reliable.sqlite3",
    reliable_statsd_host="127.0.0.1",
    reliable_queue_depth_interval=0.2,
)


@app.task(base=ReliableTask, name="sqla.echo", timeout=10, waive={"idempotency": "test"})
def echo(n: int) -> int:
    return n


def create_result_tables() -> None:
    import sqlalchemy as sa
    from celery.backends.database.models import ResultModelBase

    engine = sa.create_engine(f"sqlite:///{DATA}/results.sqlite3")
    try:
        ResultModelBase.metadata.create_all(engine)
    finally:
        engine.dispose()
