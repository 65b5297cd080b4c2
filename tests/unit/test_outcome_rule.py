"""``OutcomeEvent.rule``: the declaration that decided an execution, by its label."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable import Cancel, Outcome, ReliableTask, Snooze, cancel_on, discard_on, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.testing import capture_outcomes, perform_task


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("rules", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = None
    yield app
    app.close()


@pytest.fixture
def reliable_app(app: Celery) -> Celery:
    return app


def rule_of(task: Any, *args: Any, attempt: int = 1) -> tuple[Outcome, str | None]:
    with capture_outcomes() as seen:
        perform_task(task, args=args, attempt=attempt)
    (event,) = seen
    return event.outcome, event.rule


def test_each_declared_rule_names_itself(app: Celery) -> None:
    @app.task(base=ReliableTask, name="rules.ship", shared=False)
    @retry_on(ConnectionError, TimeoutError, wait=fixed(1), attempts=2)
    @discard_on(ValueError)
    @cancel_on(LookupError)
    def ship(error: str | None = None) -> str:
        if error is not None:
            raise {"connection": ConnectionError, "value": ValueError, "key": KeyError}[error]()
        return "shipped"

    retry = "retry_on(ConnectionError, TimeoutError)"
    assert rule_of(ship, "connection") == (Outcome.RETRIED, retry)
    assert rule_of(ship, "connection", attempt=2) == (Outcome.EXHAUSTED, retry)
    assert rule_of(ship, "value") == (Outcome.DISCARDED, "discard_on(ValueError)")
    assert rule_of(ship, "key") == (Outcome.CANCELLED, "cancel_on(LookupError)")
    assert rule_of(ship) == (Outcome.SUCCEEDED, None)


def test_the_label_is_built_with_the_rule_not_per_execution(app: Celery) -> None:
    @app.task(base=ReliableTask, name="rules.once", shared=False)
    @discard_on(ValueError)
    def once() -> None:
        raise ValueError("bad input")

    (rule,) = [r for r in once.reliable_rules() if r.kind == "discard"]
    with capture_outcomes() as seen:
        perform_task(once)
        perform_task(once)
    assert [event.rule for event in seen] == [rule.label, rule.label]
    assert all(event.rule is rule.label for event in seen)


def test_what_no_declaration_decided_has_no_rule(app: Celery) -> None:
    @app.task(base=ReliableTask, name="rules.none", bind=True, shared=False)
    def none(self: Any, how: str) -> Any:
        if how == "snooze":
            return Snooze(5, "later")
        if how == "cancel":
            raise Cancel("nothing to do")
        if how == "retry":
            raise self.retry(countdown=1)
        raise RuntimeError("nobody declared this")

    assert rule_of(none, "snooze") == (Outcome.SNOOZED, None)
    assert rule_of(none, "cancel") == (Outcome.CANCELLED, None)
    assert rule_of(none, "retry") == (Outcome.RETRIED, None)
    assert rule_of(none, "fail") == (Outcome.FAILED, None)


def test_an_unclassified_retry_names_the_apps_setting(app: Celery) -> None:
    app.conf.reliable_unclassified = "retry"

    @app.task(base=ReliableTask, name="rules.unclassified", shared=False)
    def unclassified() -> None:
        raise RuntimeError("nobody declared this")

    assert rule_of(unclassified) == (Outcome.RETRIED, 'reliable_unclassified="retry"')


def test_celery_s_autoretry_for_is_a_rule_when_it_retries_and_when_it_gives_up(
    app: Celery,
) -> None:
    @app.task(
        base=ReliableTask,
        name="rules.fetch",
        shared=False,
        autoretry_for=(IOError,),
        dont_autoretry_for=(FileNotFoundError,),
        max_retries=2,
    )
    def fetch(missing: bool = False) -> None:
        if missing:
            raise FileNotFoundError("no such feed")
        raise OSError("the feed is down")

    assert rule_of(fetch) == (Outcome.RETRIED, "autoretry_for(OSError)")
    assert rule_of(fetch, attempt=3) == (Outcome.EXHAUSTED, "autoretry_for(OSError)")
    # Excluded by dont_autoretry_for: Celery re-raises it, no rule of the task has it.
    assert rule_of(fetch, True) == (Outcome.FAILED, None)


def test_a_subclass_override_names_the_rule_that_decides(app: Celery) -> None:
    @retry_on(ConnectionError, TimeoutError, attempts=3)
    class Remote(ReliableTask):
        pass

    @app.task(base=Remote, name="rules.remote", shared=False)
    @discard_on(TimeoutError)
    def remote(error: str) -> None:
        raise {"connection": ConnectionError, "timeout": TimeoutError}[error]()

    assert rule_of(remote, "timeout") == (Outcome.DISCARDED, "discard_on(TimeoutError)")
    assert rule_of(remote, "connection") == (
        Outcome.RETRIED,
        "retry_on(ConnectionError, TimeoutError)",
    )


def test_a_duplicate_names_the_idempotency_key(app: Celery, reliable_db: Any) -> None:
    @app.task(
        base=ReliableTask,
        name="rules.charge",
        shared=False,
        timeout=10,
        idempotency_key="charge:{order_id}",
    )
    def charge(order_id: int) -> int:
        return order_id

    assert rule_of(charge, 1) == (Outcome.SUCCEEDED, None)
    assert rule_of(charge, 1) == (Outcome.DUPLICATE, "idempotency_key")
