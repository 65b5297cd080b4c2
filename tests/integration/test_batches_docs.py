"""docs/batches.md's example, run as written against a real Redis, a fresh SQLite
store and an embedded worker (whose relay thread publishes the callbacks)."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.docs_blocks import DOCS, marked_block
from tests.support.celery_apps import new_redis_db
from tests.support.workers import embedded_worker, settle

pytestmark = pytest.mark.integration


def waited(app: Any, batch_id: str, which: str) -> Any:
    """The callback's result; when it does not come, where the batch stands (its row,
    its members, the outbox), so a failure says which step did not happen."""
    from celery.exceptions import TimeoutError as ResultTimeout

    from celery_reliable.store import store_for

    try:
        return app.AsyncResult(f"{batch_id}-{which}").get(timeout=30)
    except ResultTimeout:
        store = store_for(app)
        assert store is not None
        raise AssertionError(
            f"no {which} result: batch {store.batches.get(batch_id)}, members "
            f"{store.batches.members(batch_id)}, outbox {store.outbox.status()}"
        ) from None


@pytest.mark.usefixtures("no_shared_tasks")  # the example's app: its own tasks only
def test_the_batches_example_runs(redis_url: str, tmp_path: Path) -> None:
    broker = new_redis_db(redis_url)
    code = marked_block(DOCS / "batches.md", "batches-example")
    code = code.replace("redis://localhost:6379/0", broker)
    code = code.replace("sqlite:///reliable.db", f"sqlite:///{tmp_path}/reliable.db")
    module = types.ModuleType("batches_docs")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "batches.md", "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    app = module.app
    app.conf.update(
        result_backend=broker,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=False,
    )
    rows = [
        {"id": 1, "email": "ada@example.com"},
        {"id": 2, "email": "nobody"},
        {"id": 3, "email": "grace@example.com"},
    ]
    try:
        with embedded_worker(app):
            batch_id = module.start_import(42, rows)
            summary = waited(app, batch_id, "on_complete")
            assert summary == "import 42: 2 of 3 rows, failed: 1"
            settle(app)
            # Written with on_complete's message, or never: a row was DISCARDED.
            assert app.AsyncResult(f"{batch_id}-on_success").state == "PENDING"
        good = [{"id": 4, "email": "linus@example.com"}]
        with embedded_worker(app):
            batch_id = module.start_import(43, good)
            assert waited(app, batch_id, "on_success") == "import 43 complete"
    finally:
        app.close()
