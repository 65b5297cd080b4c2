"""Drop-in compatibility: Celery's own retry, autoretry, Reject, Ignore, replace, chains
and chords keep their meaning under ``base=ReliableTask`` (real Redis, real worker)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from celery import chain, chord
from celery.exceptions import Ignore, Reject
from celery.signals import task_postrun

from celery_reliable import Cancel, Discard, Outcome, ReliableTask, Snooze
from celery_reliable.results import wait_for_outcome
from tests.helpers import CELERY_VERSION, Calls, app_with_worker, new_key, tasks_in
from tests.support.workers import settle

pytestmark = pytest.mark.integration


class TransientError(Exception):
    pass


calls = Calls()
bump = calls.bump
errbacks: list[str] = []


def define(app: Any) -> SimpleNamespace:
    @app.task(shared=False, base=ReliableTask, bind=True, name="c.manual_retry", max_retries=2)
    def manual_retry(self: ReliableTask, key: str, succeed_on: int) -> str:
        n = bump(key)
        if n < succeed_on:
            raise self.retry(exc=TransientError(f"call {n}"), countdown=0.05)
        return f"ok after {n}"

    @app.task(
        shared=False,
        base=ReliableTask,
        name="c.autoretry",
        autoretry_for=(TransientError,),
        retry_kwargs={"countdown": 0.05},
        max_retries=2,
    )
    def autoretry(key: str) -> None:
        bump(key)
        raise TransientError("autoretry me")

    @app.task(shared=False, base=ReliableTask, bind=True, name="c.retry_once", max_retries=1)
    def retry_once(self: ReliableTask, key: str) -> None:
        if bump(key) == 1:
            raise self.retry(exc=TransientError("once more"), countdown=0)
        raise TransientError("still broken")

    @app.task(
        shared=False,
        base=ReliableTask,
        name="c.autoretry_backoff",
        autoretry_for=(TransientError,),
        retry_backoff=True,
        retry_backoff_max=1,
        retry_jitter=False,
        max_retries=1,
    )
    def autoretry_backoff(key: str, fail_times: int) -> str:
        if bump(key) <= fail_times:
            raise TransientError("once")
        return "ok"

    @app.task(shared=False, base=ReliableTask, name="c.reject", acks_late=True)
    def reject(key: str, requeue: bool) -> None:
        n = bump(key)
        if requeue and n > 1:
            return
        raise Reject("bad message", requeue=requeue)

    @app.task(shared=False, base=ReliableTask, name="c.ignore")
    def ignore(key: str) -> None:
        bump(key)
        raise Ignore()

    @app.task(shared=False, base=ReliableTask, name="c.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, base=ReliableTask, bind=True, name="c.replacer")
    def replacer(self: ReliableTask, x: int) -> Any:
        return self.replace(add.s(x, 100))

    @app.task(shared=False, base=ReliableTask, name="c.stop")
    def stop(value: int, how: str, key: str) -> Any:
        n = bump(key)
        if how == "snooze-once" and n == 1:
            return Snooze(0.3, "not yet")
        if how == "cancel":
            return Cancel("nothing to do")
        if how == "discard":
            raise Discard("cannot be done")
        if how == "fail":
            raise ValueError("broken")
        return value

    @app.task(shared=False, base=ReliableTask, name="c.record")
    def record(value: Any, key: str) -> Any:
        bump(key)
        return value

    @app.task(shared=False, name="c.on_error")
    def on_error(request: Any, exc: Any, traceback: Any) -> None:
        errbacks.append(request.id)

    @app.task(shared=False, base=ReliableTask, name="c.fail_any")
    def fail_any(*args: Any) -> None:
        raise ValueError(f"failed with {len(args)} arguments")

    @app.task(shared=False, base=ReliableTask, name="c.collect")
    def collect(values: list[Any]) -> list[Any]:
        return values

    @app.task(shared=False, base=ReliableTask, bind=True, name="c.write_request")
    def write_request(self: ReliableTask, key: str, what: str) -> str:
        """Writes to self.request, as users do to stop a chain (celery#3550)."""
        bump(key)
        if what == "chain":
            self.request.chain = None
        elif what == "callbacks":
            self.request.callbacks = None
        self.request.reliable_note = f"{what} written"
        return what

    return tasks_in(locals())


@pytest.fixture(scope="module")
def env(make_app: Any) -> Any:
    app = make_app("compat")
    with app_with_worker(app, define(app)) as env:
        yield env


key = new_key


def test_self_retry_keeps_celery_meaning(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.manual_retry.apply_async((k, 3))
    assert result.get(timeout=10) == "ok after 3"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.SUCCEEDED]
    assert [e.attempt for e in events] == [1, 2, 3]
    assert events[0].retry_in == pytest.approx(0.05)


def test_self_retry_max_retries_exhausts(env: Any, outcomes: Any) -> None:
    """max_retries=2 under self.retry(exc=...): Celery re-raises exc on the third call."""
    k = key()
    result = env.manual_retry.apply_async((k, 99))
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events][:2] == [Outcome.RETRIED, Outcome.RETRIED]
    # the exception Celery re-raises is unclassified here: FAILED (fail mode)
    assert events[2].outcome is Outcome.FAILED
    assert calls(k) == 3


def test_autoretry_for_keeps_celery_meaning_and_ends_exhausted(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.autoretry.apply_async((k,))
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.EXHAUSTED]
    assert "max_retries=2" in events[-1].reason
    assert isinstance(result.info, TransientError)
    settle(env.app)
    assert calls(k) == 3


def test_retry_backoff_is_celerys(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.autoretry_backoff.apply_async((k, 1))
    assert result.get(timeout=10) == "ok"
    first, second = outcomes.wait_for(result.id, count=2)
    assert first.outcome is Outcome.RETRIED
    assert first.retry_in == 1  # retry_backoff=True, first retry: 1 s, no jitter
    assert second.outcome is Outcome.SUCCEEDED


def test_reject_requeue_snoozes_and_runs_again(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.reject.apply_async((k, True))
    events = outcomes.wait_for(result.id, count=2)
    assert [e.outcome for e in events] == [Outcome.SNOOZED, Outcome.SUCCEEDED]
    assert "Reject(requeue=True)" in events[0].reason
    assert calls(k) == 2


def test_reject_without_requeue_is_discarded(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.reject.apply_async((k, False))
    event = outcomes.wait_for(result.id)[0]
    assert event.outcome is Outcome.DISCARDED
    # Celery's meaning is kept: since 5.7 it records FAILURE for a rejected, dropped
    # message (celery#4222); before, it stores nothing and the result stays PENDING.
    if CELERY_VERSION >= (5, 7):
        assert wait_for_outcome(result, timeout=10) == "FAILURE"
        settle(env.app)
    else:
        settle(env.app)
        assert result.state == "PENDING"
    assert calls(k) == 1


def test_ignore_is_cancelled_and_stores_nothing(env: Any, outcomes: Any) -> None:
    k = key()
    result = env.ignore.apply_async((k,))
    event = outcomes.wait_for(result.id)[0]
    assert event.outcome is Outcome.CANCELLED
    assert event.reason.startswith("Ignore")
    settle(env.app)
    assert result.state == "PENDING", "Ignore keeps Celery's meaning: no state is stored"


def test_replace_succeeds_and_the_replacement_runs(env: Any, outcomes: Any) -> None:
    result = env.replacer.apply_async((1,))
    assert result.get(timeout=10) == 101
    # The replacement runs under the same task id, on another pool thread: its outcome
    # may arrive before the replaced execution's, which is sent after the publish.
    events = outcomes.wait_for(result.id, count=2)
    by_task = {e.task_name: e for e in events}
    assert set(by_task) == {"c.replacer", "c.add"}
    assert by_task["c.replacer"].outcome is Outcome.SUCCEEDED
    assert "replaced" in by_task["c.replacer"].reason
    assert by_task["c.add"].outcome is Outcome.SUCCEEDED


def test_chain_runs_on_success(env: Any, outcomes: Any) -> None:
    k = key()
    result = chain(env.stop.s(5, "ok", k), env.record.s(k)).apply_async()
    assert result.get(timeout=10) == 5
    assert calls(k) == 2


@pytest.mark.parametrize(("how", "state"), [("cancel", "CANCELLED"), ("discard", "DISCARDED")])
def test_cancelled_or_discarded_link_ends_the_chain(
    env: Any, outcomes: Any, how: str, state: str
) -> None:
    k = key()
    errbacks.clear()
    first = env.stop.s(5, how, k).set(link_error=env.on_error.s())
    result = chain(first, env.record.s(k), env.record.s(k)).apply_async()
    head = result.parent.parent
    assert wait_for_outcome(head, timeout=10) == state
    settle(env.app)
    assert calls(k) == 1, "later links never run"
    assert result.state == "PENDING"
    assert errbacks == [], "nothing failed, so no errback runs"


@pytest.mark.parametrize("what", ["chain", "callbacks"])
def test_the_body_writes_the_tracers_own_request(env: Any, outcomes: Any, what: str) -> None:
    """One request per execution: what the body writes to ``self.request`` is what
    Celery acts on after it (the rest of a chain, link callbacks) and what
    ``task_postrun`` receivers read."""
    k = key()
    notes: dict[str, Any] = {}

    def read_request(sender: Any = None, task_id: str = "", task: Any = None, **_: Any) -> None:
        if getattr(sender, "name", None) == "c.write_request":
            notes[task_id] = getattr(task.request, "reliable_note", None)

    task_postrun.connect(read_request, weak=False)
    try:
        first = env.write_request.si(k, what)
        if what == "chain":
            result = chain(first, env.record.si(1, k), env.record.si(2, k)).apply_async()
            head = result.parent.parent
        else:
            head = first.apply_async(link=[env.record.si(1, k), env.record.si(2, k)])
        assert head.get(timeout=10) == what
        assert outcomes.wait_for(head.id)[0].outcome is Outcome.SUCCEEDED
        settle(env.app)
        assert calls(k) == 1, f"the {what} the body cleared still ran"
        assert notes == {head.id: f"{what} written"}
    finally:
        task_postrun.disconnect(read_request)


def test_failed_link_runs_errbacks(env: Any, outcomes: Any) -> None:
    k = key()
    errbacks.clear()
    first = env.stop.s(5, "fail", k).set(link_error=env.on_error.s())
    result = chain(first, env.record.s(k)).apply_async()
    head = result.parent
    assert wait_for_outcome(head, timeout=10) == "FAILURE"
    settle(env.app)
    assert errbacks == [head.id]
    assert calls(k) == 1


def test_chord_counts_cancelled_parts(env: Any, outcomes: Any) -> None:
    """A CANCELLED part counts as done: the body runs and gets the part's outcome info."""
    k = key()
    result = chord([env.stop.s(1, "ok", k), env.stop.s(2, "cancel", k), env.stop.s(3, "ok", k)])(
        env.collect.s()
    )
    values = result.get(timeout=15)
    assert values[0] == 1 and values[2] == 3
    assert values[1]["outcome"] == "cancelled"
    assert values[1]["reason"] == "nothing to do"


def test_a_snoozed_chord_part_is_counted_once_it_ends(env: Any, outcomes: Any) -> None:
    """A SNOOZED part has not ended: the chord body waits for its next run's value."""
    k, late = key(), key()
    result = chord(
        [env.stop.s(1, "ok", k), env.stop.s(2, "snooze-once", late), env.stop.s(3, "ok", k)]
    )(env.collect.s())
    assert result.get(timeout=15) == [1, 2, 3]
    assert calls(late) == 2


def test_task_always_eager(make_app: Any) -> None:
    """task_always_eager: .delay() runs inline and shows our states on the result."""
    app = make_app("eager", task_always_eager=True, task_store_eager_result=False)

    @app.task(shared=False, base=ReliableTask, name="e.cancel")
    def cancel() -> Any:
        return Cancel("not needed")

    @app.task(shared=False, base=ReliableTask, name="e.add")
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(1, 2).get() == 3
    result = cancel.delay()
    assert result.state == "CANCELLED"
    assert result.info["reason"] == "not needed"
    # nothing was published or stored (Celery warns when asked)
    with pytest.warns(RuntimeWarning, match="task_always_eager"):
        assert app.AsyncResult(result.id).state == "PENDING"


def test_a_task_that_is_its_own_errback_has_one_outcome(env: Any, outcomes: Any) -> None:
    """Celery calls an old-style errback ``(request, exc, traceback)`` inline, while the
    failed execution's request is still on the stack (celery/backends/base.py). When
    the errback is the failing task itself, that call is a function call: one FAILED
    outcome for the task id, not two (and not two dead letters). Found by Celery's
    test_stamp_canvas_with_dictionary_link_error."""
    ended = threading.Event()
    seen: list[str] = []

    def after(sender: Any = None, task_id: str = "", **_: Any) -> None:
        if getattr(sender, "name", None) == "c.fail_any":
            seen.append(task_id)
            ended.set()

    task_postrun.connect(after, weak=False)
    try:
        result = env.fail_any.apply_async((1,), link_error=env.fail_any.s())
        # task_postrun comes after the failure is stored and the inline errback ran.
        assert ended.wait(10)
        assert seen == [result.id]
        assert wait_for_outcome(result, timeout=10) == "FAILURE"
        events = outcomes.for_id(result.id)
        assert [e.outcome for e in events] == [Outcome.FAILED], events
        assert "1 arguments" in events[0].reason
    finally:
        task_postrun.disconnect(after)


def test_a_retry_that_ends_first_keeps_its_final_state(env: Any) -> None:
    """``self.retry()`` publishes the retry, and Celery stores RETRY after that: the
    retry may end (and store FAILURE) first. Here it always does: the first run's
    RETRIED outcome waits for the retry's outcome before the tracer goes on. The final
    state stays FAILURE (RETRY is stored before the publish, and only then)."""
    from celery_reliable.signals import task_outcome

    k = key()
    retry_ended = threading.Event()

    def hold_the_first_run(sender: Any = None, event: Any = None, **_: Any) -> None:
        if event is None or event.task_name != "c.retry_once":
            return
        if event.outcome is Outcome.RETRIED:
            assert retry_ended.wait(10), "the retry never ended"
        else:
            retry_ended.set()

    task_outcome.connect(hold_the_first_run, weak=False)
    try:
        result = env.retry_once.apply_async((k,))
        assert retry_ended.wait(15)
        settle(env.app)  # the first run's tracer has stored what it stores
    finally:
        task_outcome.disconnect(hold_the_first_run)
    assert result.state == "FAILURE", result.state
    assert calls(k) == 2
