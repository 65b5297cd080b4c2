"""``reliable_unclassified``: "fail" is the default (tested with every outcome);
"retry" gives unclassified errors a bounded default rule. A misspelt setting stops the
worker at start-up."""

from __future__ import annotations

from typing import Any

import pytest
from celery.exceptions import ImproperlyConfigured

from celery_reliable import Outcome, ReliableTask
from celery_reliable.results import wait_for_outcome
from celery_reliable.worker.misconfigured import WorkerMisconfigured
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration


def test_retry_mode_retries_unclassified_errors_then_exhausts(make_app: Any, outcomes: Any) -> None:
    app = make_app("unclassified", reliable_unclassified="retry", reliable_unclassified_attempts=2)
    calls: list[int] = []

    @app.task(base=ReliableTask, name="u.boom")
    def boom() -> None:
        calls.append(1)
        raise LookupError("nobody declared me")

    with embedded_worker(app):
        result = boom.apply_async()
        assert wait_for_outcome(result, timeout=15) == "FAILURE"
        first, second = outcomes.wait_for(result.id, count=2)
    assert first.outcome is Outcome.RETRIED
    # the default rule: exponential from 1 s, jitter up to 15 %
    assert 1.0 <= first.retry_in <= 1.15
    assert second.outcome is Outcome.EXHAUSTED
    assert "2/2" in second.reason
    assert len(calls) == 2


def test_misspelt_setting_stops_the_worker_at_start(make_app: Any) -> None:
    app = make_app("typo", reliable_unclasified="retry")

    @app.task(base=ReliableTask, name="typo.noop")
    def noop() -> None:
        return None

    with (
        pytest.raises(WorkerMisconfigured, match="reliable_unclassified") as stopped,
        embedded_worker(app),
    ):
        pass
    assert isinstance(stopped.value.cause, ImproperlyConfigured)
    assert stopped.value.code == 1
