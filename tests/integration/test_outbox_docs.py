"""docs/enqueue.md's example, run as written against a real Redis, a fresh SQLite
database (the first publish_in creates the store's tables in the caller's transaction,
which already holds SQLite's write lock), and an embedded worker whose relay thread
publishes the row."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from tests.docs_blocks import DOCS, marked_block
from tests.support.celery_apps import new_redis_db
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration


def test_the_outbox_example_runs(redis_url: str, tmp_path: Path) -> None:
    broker = new_redis_db(redis_url)
    code = marked_block(DOCS / "enqueue.md", "enqueue-outbox-example")
    code = code.replace("redis://localhost:6379/0", broker)
    code = code.replace("sqlite:///shop.db", f"sqlite:///{tmp_path}/shop.db")
    # A module of its own: SQLAlchemy resolves the models' annotations in it.
    module = types.ModuleType("enqueue_docs")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "enqueue.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    app, place_order = module.app, module.place_order
    app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=False)
    try:
        result = place_order("ada@example.com")  # before any worker: the row waits
        with embedded_worker(app):
            assert result.get(timeout=30) == "charged order 1"
    finally:
        app.close()
