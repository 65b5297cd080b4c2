"""Every outcome end to end: real Redis broker and result backend, real worker (threads).

Each test publishes with ``apply_async``, lets the embedded worker run it, and asserts
both what the signal said and what the result backend stores.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from celery_reliable import (
    Cancel,
    Discard,
    Outcome,
    ReliableTask,
    Snooze,
    cancel_on,
    discard_on,
    retry_on,
)
from celery_reliable.backoff import fixed
from celery_reliable.results import wait_for_outcome
from tests.helpers import Calls, app_with_worker, new_key, tasks_in
from tests.support.celery_apps import new_amqp_app
from tests.support.waiting import wait_until
from tests.support.workers import settle

pytestmark = pytest.mark.integration


class TransientError(Exception):
    pass


class OtherTransient(Exception):
    pass


class InvalidEmail(Exception):
    pass


class OrderNotFound(Exception):
    pass


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after}s")
        self.retry_after = retry_after


class Base(Exception):
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Sibling(Base):
    pass


calls = Calls()
bump = calls.bump
callbacks: list[tuple[str, Any, BaseException]] = []


def define(app: Any) -> SimpleNamespace:
    @app.task(shared=False, base=ReliableTask, name="t.succeed")
    def succeed(x: int) -> int:
        return x * 2

    @app.task(shared=False, base=ReliableTask, name="t.flaky")
    @retry_on(TransientError, wait=fixed(0.1), attempts=5)
    def flaky(key: str, failures: int) -> str:
        if bump(key) <= failures:
            raise TransientError(f"call {calls(key)}")
        return "ok"

    def exhausted_callback(task: Any, exc: BaseException) -> None:
        callbacks.append(("exhausted", task.name, exc))
        raise RuntimeError("a broken callback must not change the outcome")

    @app.task(shared=False, base=ReliableTask, name="t.always_transient")
    @retry_on(TransientError, wait=fixed(0.1), attempts=3, on_exhausted=exhausted_callback)
    def always_transient(key: str) -> None:
        bump(key)
        raise TransientError("still down")

    @app.task(shared=False, base=ReliableTask, name="t.five_attempts")
    @retry_on(TransientError, wait=fixed(0.05), attempts=5)
    def five_attempts(key: str) -> None:
        bump(key)
        raise TransientError("down")

    def discard_callback(task: Any, exc: BaseException) -> None:
        callbacks.append(("discard", task.name, exc))

    @app.task(shared=False, base=ReliableTask, name="t.invalid", bind=True)
    @discard_on(InvalidEmail, on_discard=discard_callback)
    def invalid(self: ReliableTask, key: str) -> None:
        bump(key)
        raise InvalidEmail("no @ in 'bob'")

    @app.task(shared=False, base=ReliableTask, name="t.missing")
    @cancel_on(OrderNotFound)
    def missing(key: str) -> None:
        bump(key)
        raise OrderNotFound("order 42")

    @app.task(shared=False, base=ReliableTask, name="t.explicit")
    def explicit(kind: str) -> Any:
        if kind == "return-cancel":
            return Cancel("customer deleted")
        if kind == "raise-cancel":
            raise Cancel("customer deleted")
        if kind == "return-discard":
            return Discard("payload is garbage")
        raise Discard("payload is garbage")

    @app.task(shared=False, base=ReliableTask, name="t.unclassified")
    def unclassified(key: str) -> None:
        bump(key)
        raise KeyError("surprise")

    @app.task(shared=False, base=ReliableTask, name="t.snoozer")
    @retry_on(TransientError, wait=fixed(0.05), attempts=2)
    def snoozer(key: str, snoozes: int) -> str:
        n = bump(key)
        if n <= snoozes:
            return Snooze(0.1)  # type: ignore[return-value]
        if n == snoozes + 1:
            raise TransientError("one real failure after the snoozes")
        return "done"

    @app.task(shared=False, base=ReliableTask, name="t.always_snooze", max_snoozes=2)
    def always_snooze(key: str) -> None:
        bump(key)
        raise Snooze(0.05, "waiting for the warehouse")

    @app.task(shared=False, base=ReliableTask, name="t.two_rules")
    @retry_on(TransientError, wait=fixed(0.05), attempts=2)
    @retry_on(OtherTransient, wait=fixed(0.05), attempts=2)
    def two_rules(key: str) -> str:
        n = bump(key)
        if n == 1:
            raise TransientError("first rule, once")
        if n == 2:
            raise OtherTransient("second rule, once")
        return "survived"

    @app.task(shared=False, base=ReliableTask, name="t.mro")
    @retry_on(Base, wait=fixed(0.05), attempts=2)
    @discard_on(Child)
    def mro(kind: str, key: str) -> None:
        bump(key)
        raise {"child": Child, "grandchild": GrandChild, "sibling": Sibling}[kind](kind)

    @app.task(shared=False, base=ReliableTask, name="t.rate_limited")
    @retry_on(RateLimited, wait=fixed(0.05), attempts=2)
    def rate_limited(key: str) -> str:
        if bump(key) == 1:
            raise RateLimited(retry_after=1.0)
        return "ok"

    @app.task(shared=False, base=ReliableTask, name="t.soft_limit")
    @discard_on(SoftTimeLimitExceeded)
    def soft_limit() -> None:
        # Raised by hand here: the threads pool has no time limits; the prefork
        # test shows the real signal-driven one.
        raise SoftTimeLimitExceeded()

    return tasks_in(locals())


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def env(request: pytest.FixtureRequest, make_app: Any, redis_url: str) -> Any:
    """The suite runs on both brokers: re-publishing, acks, delayed delivery differ."""
    if request.param == "rabbitmq":
        rabbitmq_url = request.getfixturevalue("rabbitmq_url")
        app = new_amqp_app(rabbitmq_url, redis_url, "outcomes-amqp")
    else:
        app = make_app("outcomes")
    with app_with_worker(app, define(app)) as env:
        yield env


key = new_key


def only(events: list[Any]) -> Any:
    assert len(events) == 1, [(e.outcome, e.reason) for e in events]
    return events[0]


def test_succeeded(env: Any, outcomes: Any) -> None:
    result = env.succeed.apply_async((21,))
    assert result.get(timeout=10) == 42
    event = only(outcomes.wait_for(result.id))
    assert event.outcome is Outcome.SUCCEEDED
    assert event.attempt == 1
    assert event.duration is not None and event.duration >= 0
    assert result.state == "SUCCESS"


def test_retried_then_succeeded(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.flaky.apply_async((k, 2))
    assert result.get(timeout=15) == "ok"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.SUCCEEDED]
    assert [e.attempt for e in events] == [1, 2, 3]
    assert all(0.1 <= e.retry_in <= 0.1 * 1.15 + 1e-9 for e in events[:2])
    assert "TransientError" in events[0].reason
    assert calls(k) == 3


def test_exhausted(env: Any, outcomes: Any) -> None:
    k = key()
    callbacks.clear()
    result = env.always_transient.apply_async((k,))
    assert wait_for_outcome(result, timeout=15) == "FAILURE"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.EXHAUSTED]
    assert isinstance(events[-1].exc, TransientError)
    assert "attempts exhausted: 3/3" in events[-1].reason
    assert calls(k) == 3
    assert isinstance(result.info, TransientError)
    # the callback ran once, with (task, exc), and its own error changed nothing
    assert [(kind, name) for kind, name, _ in callbacks] == [("exhausted", "t.always_transient")]
    settle(env.app)
    assert calls(k) == 3


def test_celery_max_retries_does_not_cut_a_rule_short(env: Any, outcomes: Any) -> None:
    """Celery's default max_retries is 3; a rule of attempts=5 still gets 5 executions."""
    assert env.five_attempts.max_retries == 3
    k = key()
    result = env.five_attempts.apply_async((k,))
    assert wait_for_outcome(result, timeout=20) == "FAILURE"
    events = outcomes.wait_for(result.id, count=5)
    assert [e.outcome for e in events] == [Outcome.RETRIED] * 4 + [Outcome.EXHAUSTED]
    assert calls(k) == 5


def test_discarded_by_rule(env: Any, outcomes: Any) -> None:
    k = key()
    callbacks.clear()
    result = env.invalid.apply_async((k,))
    assert wait_for_outcome(result, timeout=10) == "DISCARDED"
    event = only(outcomes.wait_for(result.id))
    assert event.outcome is Outcome.DISCARDED
    assert isinstance(event.exc, InvalidEmail)
    # DISCARDED is an exception state to AsyncResult: info is the exception.
    assert isinstance(result.info, InvalidEmail)
    assert str(result.info) == "no @ in 'bob'"
    with pytest.raises(InvalidEmail):
        result.get(timeout=1)
    assert [(kind, name) for kind, name, _ in callbacks] == [("discard", "t.invalid")]
    settle(env.app)
    assert calls(k) == 1, "a discarded job never runs again"


def test_cancelled_by_rule(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.missing.apply_async((k,))
    assert wait_for_outcome(result, timeout=10) == "CANCELLED"
    event = only(outcomes.wait_for(result.id))
    assert event.outcome is Outcome.CANCELLED
    assert result.info["exc_type"] == "OrderNotFound"
    assert result.info["reason"] == "OrderNotFound: order 42"
    settle(env.app)
    assert calls(k) == 1


@pytest.mark.parametrize(
    ("kind", "state", "outcome"),
    [
        ("return-cancel", "CANCELLED", Outcome.CANCELLED),
        ("raise-cancel", "CANCELLED", Outcome.CANCELLED),
        ("return-discard", "DISCARDED", Outcome.DISCARDED),
        ("raise-discard", "DISCARDED", Outcome.DISCARDED),
    ],
)
def test_explicit_outcomes_raised_or_returned(
    env: Any, outcomes: Any, kind: str, state: str, outcome: Outcome
) -> None:
    result = env.explicit.apply_async((kind,))
    assert wait_for_outcome(result, timeout=10) == state
    event = only(outcomes.wait_for(result.id))
    assert event.outcome is outcome
    if outcome is Outcome.CANCELLED:
        assert result.info["reason"] == "customer deleted"
        assert result.info["outcome"] == outcome.value
        assert result.get(timeout=1) == result.info
    else:
        assert isinstance(result.info, Discard)
        assert result.info.reason == "payload is garbage"


def test_failed_unclassified(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.unclassified.apply_async((k,))
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    event = only(outcomes.wait_for(result.id))
    assert event.outcome is Outcome.FAILED
    assert isinstance(event.exc, KeyError)
    assert isinstance(result.info, KeyError)
    settle(env.app)
    assert calls(k) == 1, "fail mode never retries an unclassified error"


def test_snoozes_do_not_spend_attempts(env: Any, outcomes: Any) -> None:
    """3 snoozes, then a failure of a rule with attempts=2, then success."""
    k = key()
    result = env.snoozer.apply_async((k, 3))
    assert result.get(timeout=15) == "done"
    events = outcomes.wait_for(result.id, count=5)
    assert [e.outcome for e in events] == [
        Outcome.SNOOZED,
        Outcome.SNOOZED,
        Outcome.SNOOZED,
        Outcome.RETRIED,
        Outcome.SUCCEEDED,
    ]
    # snoozes are not retries: the attempt number moves only on the real failure
    assert [e.attempt for e in events] == [1, 1, 1, 1, 2]
    assert events[0].retry_in == pytest.approx(0.1)


def test_snooze_limit_discards(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.always_snooze.apply_async((k,))
    assert wait_for_outcome(result, timeout=10) == "DISCARDED"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events] == [Outcome.SNOOZED, Outcome.SNOOZED, Outcome.DISCARDED]
    assert "max_snoozes=2" in events[-1].reason
    assert isinstance(result.info, Discard)
    assert "max_snoozes=2" in result.info.reason
    assert calls(k) == 3


def test_snoozed_state_is_stored_between_runs(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.always_snooze.apply_async((k,), countdown=0)
    first = outcomes.wait_for(result.id, count=1)[0]
    assert first.outcome is Outcome.SNOOZED
    # The outcome is sent just before the state is stored (so that observers' records
    # exist by the time a client sees it); then the backend holds SNOOZED, or a later
    # state when the next run (50 ms away) already ended.
    wait_until(
        lambda: result.state != "PENDING",
        f"a state stored for {result.id}",
        timeout=5,
        interval=0.01,
        seen=lambda: result.state,
    )
    assert result.state in ("SNOOZED", "DISCARDED")
    wait_for_outcome(result, timeout=10)


def test_each_rule_keeps_its_own_counter(env: Any, outcomes: Any) -> None:
    """Two rules of 2 attempts each survive one failure of each."""
    k = key()
    result = env.two_rules.apply_async((k,))
    assert result.get(timeout=15) == "survived"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.SUCCEEDED]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("child", [Outcome.DISCARDED]),
        ("grandchild", [Outcome.DISCARDED]),
        ("sibling", [Outcome.RETRIED, Outcome.EXHAUSTED]),
    ],
)
def test_nearest_class_in_the_mro_wins(
    env: Any, outcomes: Any, kind: str, expected: list[Outcome]
) -> None:
    result = env.mro.apply_async((kind, key()))
    wait_for_outcome(result, timeout=10)
    events = outcomes.wait_for(result.id, count=len(expected))
    assert [e.outcome for e in events] == expected


def test_retry_after_is_honoured(env: Any, outcomes: Any) -> None:
    result = env.rate_limited.apply_async((key(),))
    assert result.get(timeout=15) == "ok"
    first, second = outcomes.wait_for(result.id, count=2)
    assert first.outcome is Outcome.RETRIED
    assert 1.0 <= first.retry_in <= 1.15
    assert second.outcome is Outcome.SUCCEEDED


def test_soft_time_limit_is_classified_like_any_exception(env: Any, outcomes: Any) -> None:
    result = env.soft_limit.apply_async()
    assert wait_for_outcome(result, timeout=10) == "DISCARDED"
    assert only(outcomes.wait_for(result.id)).outcome is Outcome.DISCARDED


def test_one_structured_log_line_per_execution_end(env: Any, outcomes: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="celery_reliable.outcome")
    k = key()
    result = env.flaky.apply_async((k, 1))
    assert result.get(timeout=10) == "ok"
    outcomes.wait_for(result.id, count=2)
    records = [
        r for r in caplog.records if r.name == "celery_reliable.outcome" and r.task_id == result.id
    ]
    assert [r.outcome for r in records] == ["retried", "succeeded"]
    retried, succeeded = records
    assert retried.levelno == logging.INFO
    assert retried.task_name == "t.flaky"
    assert retried.attempt == 1 and succeeded.attempt == 2
    assert retried.queue == env.app.conf.task_default_queue
    assert retried.reason == "TransientError: call 1 (attempt 1/5)"
    assert 0.1 <= retried.retry_in <= 0.115
    assert isinstance(succeeded.duration, float) and succeeded.retry_in is None
    line = retried.getMessage()
    assert line.startswith(f"task=t.flaky id={result.id} attempt=1 outcome=retried duration=")
    assert 'reason="TransientError: call 1 (attempt 1/5)"' in line


def test_error_outcomes_log_at_error_level(env: Any, outcomes: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="celery_reliable.outcome")
    failed = env.unclassified.apply_async((key(),))
    discarded = env.invalid.apply_async((key(),))
    outcomes.wait_for(failed.id)
    outcomes.wait_for(discarded.id)
    levels = {r.task_id: r.levelno for r in caplog.records if r.name == "celery_reliable.outcome"}
    assert levels[failed.id] == logging.ERROR
    assert levels[discarded.id] == logging.WARNING
