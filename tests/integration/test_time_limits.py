"""Time limits need the prefork pool: a real ``celery worker`` process runs these."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from celery_reliable.results import wait_for_outcome
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def worker(broker: str) -> Iterator[WorkerProcess]:
    with celery_worker("tests.support.apps.prefork", {"RELIABLE_TEST_BROKER": broker}) as w:
        yield w


@pytest.fixture(scope="module")
def app(broker: str, worker: WorkerProcess) -> Any:
    import os

    os.environ["RELIABLE_TEST_BROKER"] = broker
    from tests.support.apps import prefork as prefork_app

    return prefork_app


def test_timeout_sets_soft_and_hard_limits(app: Any) -> None:
    assert app.slow.soft_time_limit == 1
    assert app.slow.time_limit == 6  # timeout + max(5 s, 10 %)


def test_soft_limit_is_classified_retried_then_exhausted(
    app: Any, broker: str, worker: WorkerProcess
) -> None:
    result = app.slow.apply_async((3,))
    assert wait_for_outcome(result, timeout=30) == "FAILURE", worker.output
    events = recorded(broker, result.id, 2)
    assert [e["outcome"] for e in events] == ["retried", "exhausted"], worker.output
    assert all(e["exc_type"] == "SoftTimeLimitExceeded" for e in events)
    assert events[0]["attempt"] == 1 and events[1]["attempt"] == 2


def test_within_the_limit_succeeds(app: Any, broker: str) -> None:
    result = app.slow.apply_async((0.01,))
    assert result.get(timeout=20) == "finished"
    assert [e["outcome"] for e in recorded(broker, result.id, 1)] == ["succeeded"]


def test_hard_limit_ends_failed_exactly_once(app: Any, broker: str, worker: WorkerProcess) -> None:
    result = app.stubborn.apply_async()
    assert wait_for_outcome(result, timeout=30) == "FAILURE", worker.output
    recorded(broker, result.id, 1)
    # The main process reported the outcome before it stopped the child; once the pool
    # has reaped that child, no process is left that could report a second one.
    wait_until(
        lambda: _reaped_after_the_hard_limit(worker, result.id),
        "the pool to reap the child stopped at the hard limit",
        seen=lambda: worker.output[-3000:],
    )
    events = recorded(broker, result.id, 1)
    assert len(events) == 1, events
    assert events[0]["outcome"] == "failed"
    assert events[0]["exc_type"] == "TimeLimitExceeded"
    assert "Hard time limit" in worker.output


def _reaped_after_the_hard_limit(worker: WorkerProcess, task_id: str) -> bool:
    """The worker has logged the child's exit after the hard limit stopped its job."""
    lines = list(worker.lines)
    limit = [i for i, line in enumerate(lines) if "Hard time limit" in line and task_id in line]
    return bool(limit) and any("exited with" in line for line in lines[limit[0] :])
