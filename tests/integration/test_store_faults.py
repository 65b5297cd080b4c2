"""The store down or missing: a claim that cannot be taken is retried and the body never
runs without it; a dead letter that cannot be stored is logged whole. (Apart from
test_idempotency.py: each test here runs its own worker, and two embedded workers
must not run at once in one process.)"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from celery_reliable import Outcome, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.errors import StoreUnavailable
from celery_reliable.results import wait_for_outcome
from tests.conftest import embedded_worker

pytestmark = pytest.mark.integration


def test_store_down_at_claim_retries_and_never_runs_without_its_claim(
    make_app: Any, outcomes: Any, caplog: Any, tmp_path: Path
) -> None:
    """The store's directory does not exist: every claim fails. The body never runs;
    the attempts run out; the dead letter cannot be stored, so it is logged whole."""
    missing = tmp_path / "not-there"
    app = make_app("store-down", reliable_database_url=f"sqlite:///{missing}/store.sqlite3")
    ran: list[str] = []

    @app.task(
        base=ReliableTask, shared=False, name="down.charge", timeout=5, idempotency_key="{order_id}"
    )
    @retry_on(StoreUnavailable, wait=fixed(0.1), attempts=3)
    def charge(order_id: str) -> None:
        ran.append(order_id)

    caplog.set_level(logging.ERROR, logger="celery_reliable.dead_letters")
    with embedded_worker(app):
        result = charge.apply_async(("o-1",))
        events = outcomes.wait_for(result.id, count=3)
        assert wait_for_outcome(result, timeout=10) == "FAILURE"
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.EXHAUSTED]
    assert all(isinstance(e.exc, StoreUnavailable) for e in events)
    assert ran == [], "the body never ran without its claim"
    logged = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.dead_letters"]
    assert len(logged) == 1 and '"task_name": "down.charge"' in logged[0]
    assert '"args": "[\\"o-1\\"]"' in logged[0]


def test_store_back_before_the_attempts_run_out(
    make_app: Any, outcomes: Any, tmp_path: Path
) -> None:
    root = tmp_path
    missing = root / "later"
    app = make_app("store-back", reliable_database_url=f"sqlite:///{missing}/store.sqlite3")
    ran: list[str] = []

    @app.task(
        base=ReliableTask, shared=False, name="back.charge", timeout=5, idempotency_key="{order_id}"
    )
    @retry_on(StoreUnavailable, wait=fixed(0.5), attempts=5)
    def charge(order_id: str) -> str:
        ran.append(order_id)
        return "charged"

    try:
        with embedded_worker(app):
            result = charge.apply_async(("o-2",))
            first = outcomes.wait_for(result.id)[0]
            assert first.outcome is Outcome.RETRIED
            missing.mkdir()  # the database comes back
            assert result.get(timeout=15) == "charged"
        assert outcomes.for_id(result.id)[-1].outcome is Outcome.SUCCEEDED
        assert ran == ["o-2"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
