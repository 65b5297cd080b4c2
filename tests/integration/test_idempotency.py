"""Receipts, exactly-once effects, dead letters and unique enqueue, end to end: real
Redis broker, real worker, real SQLite and PostgreSQL stores (each test runs on both)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from celery_reliable import Outcome, ReliableTask, discard_on, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.errors import DeadLetterError, IdempotencyConflict
from celery_reliable.results import duplicate_of, wait_for_outcome
from tests.helpers import Calls, app_with_worker, new_key, ready_store, tasks_in
from tests.support.apps.effects import effects, metadata
from tests.support.workers import settle

pytestmark = pytest.mark.integration


class TransientError(Exception):
    pass


class CardDeclined(Exception):
    pass


calls = Calls()

#: Per order: set by the body once its atomic() committed; set by the test to let the
#: body return (the embedded worker runs in this process).
committed: dict[str, threading.Event] = {}
may_return: dict[str, threading.Event] = {}


def define(app: Any) -> SimpleNamespace:
    @app.task(
        base=ReliableTask,
        shared=False,
        bind=True,
        name="i.charge",
        timeout=20,
        idempotency_key="charge:{order_id}",
    )
    def charge(self: ReliableTask, order_id: str, amount: int, hold: float = 0.0) -> dict:
        calls.bump(order_id)
        time.sleep(hold)  # widen the race window for the concurrency test
        with self.atomic() as session:
            session.execute(
                effects.insert().values(order_id=order_id, amount=amount, task_id=self.request.id)
            )
        return {"charged": amount}

    @app.task(
        base=ReliableTask,
        shared=False,
        bind=True,
        name="i.charge_then_wait",
        timeout=20,
        idempotency_key="ctw:{order_id}",
    )
    def charge_then_wait(self: ReliableTask, order_id: str, amount: int) -> dict:
        calls.bump(order_id)
        with self.atomic() as session:
            session.execute(
                effects.insert().values(order_id=order_id, amount=amount, task_id=self.request.id)
            )
        committed[order_id].set()
        may_return[order_id].wait(timeout=15)
        return {"charged": amount}

    @app.task(
        base=ReliableTask,
        shared=False,
        bind=True,
        name="i.flaky_charge",
        timeout=20,
        idempotency_key="flaky:{order_id}",
    )
    @retry_on(TransientError, wait=fixed(0.1), attempts=3)
    def flaky_charge(self: ReliableTask, order_id: str) -> str:
        if calls.bump(order_id) == 1:
            raise TransientError("gateway timeout")
        with self.atomic() as session:
            session.execute(
                effects.insert().values(order_id=order_id, amount=1, task_id=self.request.id)
            )
        return "ok"

    @app.task(
        base=ReliableTask,
        shared=False,
        bind=True,
        name="i.fail_after_commit",
        timeout=20,
        idempotency_key="fac:{order_id}",
    )
    @retry_on(TransientError, wait=fixed(0.1), attempts=3)
    def fail_after_commit(self: ReliableTask, order_id: str) -> str:
        calls.bump(order_id)
        with self.atomic() as session:
            session.execute(
                effects.insert().values(order_id=order_id, amount=1, task_id=self.request.id)
            )
        raise TransientError("the mail after the charge failed")

    @app.task(base=ReliableTask, shared=False, name="i.decline")
    @discard_on(CardDeclined)
    def decline(order_id: str, card: str) -> None:
        raise CardDeclined(f"card {card} declined")

    @app.task(base=ReliableTask, shared=False, name="i.decline_redacted", dead_letter_redact=True)
    @discard_on(CardDeclined)
    def decline_redacted(order_id: str, card: str) -> None:
        raise CardDeclined("declined")

    @app.task(base=ReliableTask, shared=False, name="i.until_fixed")
    @retry_on(TransientError, wait=fixed(0.05), attempts=2)
    def until_fixed(order_id: str) -> str:
        if calls.bump(order_id) <= 2:
            raise TransientError("still broken")
        return "fixed"

    @app.task(base=ReliableTask, shared=False, name="i.bug")
    def bug(order_id: str) -> None:
        raise ZeroDivisionError("division by zero")

    @app.task(
        base=ReliableTask,
        shared=False,
        name="i.unique",
        unique={"period": 60, "keys": ["order_id"]},
    )
    def unique_job(order_id: str, note: str = "") -> str:
        calls.bump(order_id)
        time.sleep(0.2)  # the job runs a while: the publishers race its lock
        return order_id

    @app.task(
        base=ReliableTask,
        shared=False,
        name="i.unique_terminal",
        unique={"period": 60, "keys": ["order_id"], "release": "terminal"},
    )
    def unique_terminal(order_id: str) -> str:
        calls.bump(order_id)
        return order_id

    return tasks_in(locals())


@pytest.fixture(scope="module")
def env(make_app: Any, module_store_url: str) -> Iterator[Any]:
    app = make_app("idempotency", reliable_database_url=module_store_url)
    tasks = define(app)
    store = ready_store(app)
    metadata.create_all(store.engine)
    with app_with_worker(app, tasks, concurrency=8) as env:
        env.store = store
        yield env


def effect_rows(env: Any, order_id: str) -> list[Any]:
    with env.store.engine.connect() as connection:
        return list(connection.execute(sa.select(effects).where(effects.c.order_id == order_id)))


def test_duplicate_returns_the_stored_result_and_skips_the_body(env: Any, outcomes: Any) -> None:
    order = new_key()
    first = env.charge.apply_async((order, 100))
    assert first.get(timeout=10) == {"charged": 100}
    second = env.charge.apply_async((order, 100))
    assert second.get(timeout=10) == {"charged": 100}
    assert outcomes.wait_for(first.id)[0].outcome is Outcome.SUCCEEDED
    duplicate = outcomes.wait_for(second.id)[0]
    assert duplicate.outcome is Outcome.DUPLICATE
    assert "already succeeded" in duplicate.reason
    assert calls(order) == 1
    assert len(effect_rows(env, order)) == 1
    receipt = env.store.receipts.get("i.charge", f"charge:{order}")
    assert receipt.state == "succeeded" and receipt.task_id == first.id


def test_a_caller_tells_a_duplicate_from_a_success(env: Any, outcomes: Any) -> None:
    """Both are SUCCESS with the same value; the DUPLICATE's meta names the task id
    that did the work (results.duplicate_of), read from a fresh AsyncResult too."""
    order = new_key()
    first = env.charge.apply_async((order, 100))
    assert first.get(timeout=10) == {"charged": 100}
    second = env.charge.apply_async((order, 100))
    assert second.get(timeout=10) == {"charged": 100}
    assert second.state == "SUCCESS"
    assert duplicate_of(second) == first.id
    assert duplicate_of(env.app.AsyncResult(second.id)) == first.id
    assert duplicate_of(first) is None
    assert [e.outcome for e in outcomes.wait_for(second.id)] == [Outcome.DUPLICATE]


def test_keyword_and_positional_calls_are_the_same_payload(env: Any, outcomes: Any) -> None:
    order = new_key()
    assert env.charge.apply_async((order, 5)).get(timeout=10) == {"charged": 5}
    again = env.charge.apply_async(kwargs={"order_id": order, "amount": 5, "hold": 0.0})
    assert again.get(timeout=10) == {"charged": 5}
    assert outcomes.wait_for(again.id)[0].outcome is Outcome.DUPLICATE


def test_eight_racing_executions_of_one_key_make_one_effect(env: Any, outcomes: Any) -> None:
    order = new_key()
    results = [env.charge.apply_async((order, 7, 0.3)) for _ in range(8)]
    values = [r.get(timeout=60) for r in results]
    assert values == [{"charged": 7}] * 8
    finals = [
        outcomes.wait_for(
            r.id, until=lambda es: es and es[-1].outcome in (Outcome.SUCCEEDED, Outcome.DUPLICATE)
        )[-1].outcome
        for r in results
    ]
    assert finals.count(Outcome.SUCCEEDED) == 1, finals
    assert finals.count(Outcome.DUPLICATE) == 7, finals
    assert len(effect_rows(env, order)) == 1
    assert calls(order) == 1, "the body ran once: the others never got the claim"


def test_a_duplicate_waits_for_the_result_of_a_live_execution(env: Any, outcomes: Any) -> None:
    """atomic() committed the receipt; the body has not returned (nor its result been
    stored): a second execution snoozes instead of ending DUPLICATE with None, and once
    the first returns, ends DUPLICATE with its value."""
    order = new_key()
    committed[order], may_return[order] = threading.Event(), threading.Event()
    first = env.charge_then_wait.apply_async((order, 7))
    try:
        assert committed[order].wait(10), "the first execution never reached its commit"
        second = env.charge_then_wait.apply_async((order, 7))
        waiting = outcomes.wait_for(second.id)[0]
        assert waiting.outcome is Outcome.SNOOZED, waiting
        assert not first.ready()
    finally:
        may_return[order].set()
    assert first.get(timeout=20) == {"charged": 7}
    assert second.get(timeout=20) == {"charged": 7}
    finals = [
        outcomes.wait_for(
            r.id, until=lambda es: es and es[-1].outcome in (Outcome.SUCCEEDED, Outcome.DUPLICATE)
        )[-1].outcome
        for r in (first, second)
    ]
    assert finals == [Outcome.SUCCEEDED, Outcome.DUPLICATE]
    assert len(effect_rows(env, order)) == 1
    assert calls(order) == 1


def test_the_holders_own_message_again_does_not_wait_for_its_result(
    env: Any, outcomes: Any
) -> None:
    """The message of the execution whose atomic() committed comes back (as after its
    worker was killed: tests/integration/test_crash.py kills one for real): nothing
    will store that execution's result, so it ends DUPLICATE with None at once
    instead of snoozing until the lease ends."""
    order = new_key()
    committed[order], may_return[order] = threading.Event(), threading.Event()
    first = env.charge_then_wait.apply_async((order, 7))
    try:
        assert committed[order].wait(10), "the first execution never reached its commit"
        again = env.charge_then_wait.apply_async((order, 7), task_id=first.id)
        events = outcomes.wait_for(
            again.id, until=lambda es: any(e.outcome is Outcome.DUPLICATE for e in es)
        )
        # Its only outcome so far: the first execution is still in its body.
        assert [e.outcome for e in events] == [Outcome.DUPLICATE], events
    finally:
        may_return[order].set()
    assert len(effect_rows(env, order)) == 1
    assert calls(order) == 1


def test_conflicting_payload_is_discarded(env: Any, outcomes: Any) -> None:
    order = new_key()
    assert env.charge.apply_async((order, 100)).get(timeout=10) == {"charged": 100}
    other = env.charge.apply_async((order, 999))
    assert wait_for_outcome(other, timeout=10) == "DISCARDED"
    event = outcomes.wait_for(other.id)[0]
    assert event.outcome is Outcome.DISCARDED
    assert isinstance(event.exc, IdempotencyConflict)
    assert isinstance(other.info, IdempotencyConflict)
    assert [r.amount for r in effect_rows(env, order)] == [100]
    letters = env.store.dead_letters.list(task_name="i.charge")
    assert any(
        d.task_id == other.id and d.exc_type.endswith("IdempotencyConflict") for d in letters
    )


def test_a_failed_execution_releases_its_claim(env: Any, outcomes: Any) -> None:
    order = new_key()
    result = env.flaky_charge.apply_async((order,))
    assert result.get(timeout=10) == "ok"
    events = outcomes.wait_for(result.id, count=2)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.SUCCEEDED]
    assert len(effect_rows(env, order)) == 1


def test_effect_committed_then_error_is_not_repeated(env: Any, outcomes: Any) -> None:
    """atomic() committed the effect and the receipt; the body then failed: the retry
    finds the receipt succeeded (DUPLICATE) instead of charging again."""
    order = new_key()
    result = env.fail_after_commit.apply_async((order,))
    events = outcomes.wait_for(result.id, count=2)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.DUPLICATE]
    assert len(effect_rows(env, order)) == 1
    assert calls(order) == 1


def test_dead_letter_holds_what_went_wrong_and_can_be_retried(env: Any, outcomes: Any) -> None:
    order = new_key()
    result = env.until_fixed.apply_async((order,), headers={"tenant": "acme"})
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    assert outcomes.wait_for(result.id, count=2)[-1].outcome is Outcome.EXHAUSTED
    (letter,) = [
        d for d in env.store.dead_letters.list(task_name="i.until_fixed") if d.task_id == result.id
    ]
    assert letter.outcome == "exhausted"
    assert letter.args == [order] and letter.kwargs == {}
    assert letter.queue == "celery"
    assert letter.attempts == 2
    assert letter.exc_type == f"{__name__}.TransientError"
    assert letter.exc_message == "still broken"
    assert "TransientError: still broken" in letter.traceback
    assert "attempts exhausted: 2/2" in letter.reason
    assert letter.options["headers"] == {"tenant": "acme"}, "our own header is not kept"
    # The retry that led here, as the message's header carried it (the web view shows it).
    [(attempt, at, reason)] = letter.options["retry_history"]
    assert attempt == 1 and abs(at - time.time()) < 30
    assert reason.startswith("TransientError: still broken")

    again = env.store.dead_letters.retry(letter.id)
    assert again.id != result.id
    # a fresh attempt budget: the third call succeeds on the retried job's first run
    assert again.get(timeout=10) == "fixed"
    assert outcomes.wait_for(again.id)[0].attempt == 1
    marked = env.store.dead_letters.get(letter.id)
    assert marked.retried_task_id == again.id and marked.retried_at is not None
    with pytest.raises(DeadLetterError, match="already retried"):
        env.store.dead_letters.retry(letter.id)


@pytest.mark.parametrize(("task", "outcome"), [("decline", "discarded"), ("bug", "failed")])
def test_every_dead_letter_outcome_writes_a_row(
    env: Any, outcomes: Any, task: str, outcome: str
) -> None:
    order = new_key()
    args = (order, "4242") if task == "decline" else (order,)
    result = getattr(env, task).apply_async(args)
    wait_for_outcome(result, timeout=10)
    outcomes.wait_for(result.id)
    rows = [d for d in env.store.dead_letters.list() if d.task_id == result.id]
    assert [d.outcome for d in rows] == [outcome]
    assert rows[0].args == list(args)


def test_redacted_dead_letters_keep_no_arguments(env: Any, outcomes: Any) -> None:
    result = env.decline_redacted.apply_async((new_key(), "4242-4242-4242-4242"))
    assert wait_for_outcome(result, timeout=10) == "DISCARDED"
    outcomes.wait_for(result.id)
    (letter,) = [d for d in env.store.dead_letters.list() if d.task_id == result.id]
    assert letter.redacted and letter.args is None and letter.kwargs is None
    with pytest.raises(DeadLetterError, match="redacted"):
        env.store.dead_letters.retry(letter.id)


def test_unique_enqueue_under_twenty_concurrent_publishers(env: Any, outcomes: Any) -> None:
    order = new_key()
    barrier = threading.Barrier(20)
    results: list[Any] = []
    lock = threading.Lock()

    def publish(n: int) -> None:
        barrier.wait()
        result = env.unique_job.apply_async((order,), {"note": f"publisher {n}"})
        with lock:
            results.append(result)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 20
    assert len({r.id for r in results}) == 1, "all publishers got the holder's result"
    assert results[0].get(timeout=10) == order
    settle(env.app)
    assert calls(order) == 1, "one message was published and run"
    # while the period runs, publishing again returns the same job
    assert env.unique_job.apply_async((order,)).id == results[0].id


def test_unique_release_at_terminal_outcome(env: Any, outcomes: Any) -> None:
    order = new_key()
    first = env.unique_terminal.apply_async((order,))
    assert first.get(timeout=10) == order
    outcomes.wait_for(first.id)
    second = env.unique_terminal.apply_async((order,))
    assert second.id != first.id, "released when the first one succeeded"
    assert second.get(timeout=10) == order
    assert calls(order) == 2
