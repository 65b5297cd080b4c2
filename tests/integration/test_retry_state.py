"""A retry that ends before the run that scheduled it has stored RETRY: the job's
state must end at the retry's outcome, not at that late RETRY (celery stores RETRY
after the retry message is published; under load the retry can win the race)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from celery_reliable import Outcome, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.compat.celery_internals import tracer_reads_request_ignore_result
from celery_reliable.results import wait_for_outcome
from celery_reliable.signals import task_outcome
from tests.support.workers import embedded_worker, settle

pytestmark = pytest.mark.integration


class Down(Exception):
    pass


@pytest.mark.skipif(
    not tracer_reads_request_ignore_result,
    reason="Celery 5.4 and 5.5 store the tracer's RETRY whatever the request says",
)
def test_the_state_ends_at_the_retrys_outcome_however_late_the_first_run_is(
    make_app: Any,
) -> None:
    app = make_app("retry-state")

    @app.task(base=ReliableTask, shared=False, name="rs.always_down")
    @retry_on(Down, wait=fixed(0.05), attempts=2)
    def always_down() -> None:
        raise Down("still")

    def stall_the_first_run(sender: Any = None, **fields: Any) -> None:
        # Between the re-publish and the raise: the tracer's RETRY store comes after
        # this, by which time the retry (50 ms later, on another thread) has ended.
        if (
            getattr(sender, "name", None) == "rs.always_down"
            and fields["outcome"] is Outcome.RETRIED
        ):
            time.sleep(1.5)  # the stall under test: the first run is late on purpose

    task_outcome.connect(stall_the_first_run, weak=False)
    try:
        with embedded_worker(app, concurrency=2):
            result = always_down.delay()
            assert wait_for_outcome(result, timeout=20) == "FAILURE"
            settle(app)  # every run has ended: the first one's late RETRY is stored
            # What the backend holds now (an AsyncResult caches a ready state).
            backend = app.backend
            stored = backend.decode(backend.client.get(backend.get_key_for_task(result.id)))
            assert stored["status"] == "FAILURE", stored
    finally:
        task_outcome.disconnect(stall_the_first_run)
