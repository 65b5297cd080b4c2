"""Building ReliableTask classes (options, declarations, inheritance) and eager runs.

No broker: the app uses the in-memory transport and eager ``apply()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery, Task, current_task
from celery.exceptions import ImproperlyConfigured
from celery.signals import task_postrun

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
from celery_reliable.errors import StoreUnavailable
from celery_reliable.policy import CancelRule, DiscardRule, RetryRule, Rule
from celery_reliable.signals import task_outcome


class Boom(Exception):
    pass


class ChildBoom(Boom):
    pass


class InvalidEmail(Exception):
    pass


class OrderNotFound(Exception):
    pass


class Unclassified(Exception):
    pass


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.reliable_database_url = None  # no store: these tests build and run classes
    yield app
    app.close()


def own_rules(task: Any) -> list[Any]:
    """The task's rules without the built-in StoreUnavailable rule every task has."""
    return [r for r in task.reliable_rules() if r.exc_types != (StoreUnavailable,)]


def build(app: Celery, function: Any, **options: Any) -> Any:
    """``@app.task(base=ReliableTask, **options)`` and force the class to be built."""
    options.setdefault("base", ReliableTask)
    # shared=False: a shared task is also built in every app finalized later, so one
    # test's deliberately broken task would break the others.
    options.setdefault("shared", False)
    task = app.task(**options)(function)
    assert task.name  # evaluates the lazy proxy: the class is built here
    return task


def rule_for(task: Any, exc: BaseException) -> Rule | None:
    return task._reliable_policy.classify(exc)  # type: ignore[no-any-return]


# -- declarations on functions ------------------------------------------------------------------


@pytest.mark.parametrize("bind", [False, True])
def test_function_declarations_become_the_task_rules(app: Celery, bind: bool) -> None:
    @retry_on(Boom, wait=fixed(1), attempts=4)
    @discard_on(InvalidEmail)
    @cancel_on(OrderNotFound)
    def send(*args: Any) -> None: ...

    task = build(app, send, bind=bind)
    rules = own_rules(task)
    assert {type(rule) for rule in rules} == {RetryRule, DiscardRule, CancelRule}
    assert len(rules) == 3
    retry = rule_for(task, Boom())
    assert isinstance(retry, RetryRule)
    assert retry.attempts == 4
    assert isinstance(rule_for(task, InvalidEmail()), DiscardRule)
    assert isinstance(rule_for(task, OrderNotFound()), CancelRule)
    assert rule_for(task, Unclassified()) is None


def test_a_task_without_declarations_has_no_rules(app: Celery) -> None:
    def plain() -> int:
        return 1

    task = build(app, plain)
    assert own_rules(task) == []
    # only the built-in rule: a store that cannot be reached is retried
    (builtin,) = task.reliable_rules()
    assert isinstance(builtin, RetryRule) and builtin.exc_types == (StoreUnavailable,)
    assert builtin.attempts == 10


def test_two_tasks_do_not_share_declarations(app: Celery) -> None:
    @retry_on(Boom)
    def first() -> None: ...

    @discard_on(Boom)
    def second() -> None: ...

    one, two = build(app, first), build(app, second)
    assert isinstance(rule_for(one, Boom()), RetryRule)
    assert isinstance(rule_for(two, Boom()), DiscardRule)


def test_declarations_above_app_task_raise_type_error(app: Celery) -> None:
    def misplaced() -> None: ...

    task = app.task(base=ReliableTask, shared=False)(misplaced)
    with pytest.raises(TypeError):
        retry_on(Boom)(task)


# -- class-based tasks ---------------------------------------------------------------------------


def test_class_declarations_become_the_class_rules() -> None:
    @retry_on(Boom, attempts=2)
    @discard_on(InvalidEmail)
    class Charge(ReliableTask):
        name = "unit.charge"

        def run(self, amount: int) -> int:
            return amount

    retry = Charge._reliable_policy.classify(Boom())
    assert isinstance(retry, RetryRule)
    assert retry.attempts == 2
    assert isinstance(Charge._reliable_policy.classify(InvalidEmail()), DiscardRule)
    assert len(own_rules(Charge)) == 2


def test_declarations_on_the_run_method_count_too() -> None:
    class Charge(ReliableTask):
        name = "unit.charge_run"

        @cancel_on(OrderNotFound)
        def run(self) -> None: ...

    assert isinstance(Charge._reliable_policy.classify(OrderNotFound()), CancelRule)


def test_subclasses_inherit_and_override_rules() -> None:
    @retry_on(Boom, InvalidEmail, attempts=3)
    class Charge(ReliableTask):
        name = "unit.charge_parent"

    class Refund(Charge):
        name = "unit.refund"

    @discard_on(InvalidEmail)
    @cancel_on(OrderNotFound)
    class Capture(Charge):
        name = "unit.capture"

    parent_rule = Charge._reliable_policy.classify(Boom())
    assert isinstance(parent_rule, RetryRule)

    # Inherited as is.
    assert Refund._reliable_policy.classify(Boom()) is parent_rule
    assert Refund._reliable_policy.classify(InvalidEmail()) is parent_rule

    # Overridden for InvalidEmail only; a new class added.
    assert Capture._reliable_policy.classify(Boom()) is parent_rule
    assert isinstance(Capture._reliable_policy.classify(InvalidEmail()), DiscardRule)
    assert isinstance(Capture._reliable_policy.classify(OrderNotFound()), CancelRule)

    # The parent and the sibling are untouched.
    assert Charge._reliable_policy.classify(InvalidEmail()) is parent_rule
    assert Charge._reliable_policy.classify(OrderNotFound()) is None
    assert Refund._reliable_policy.classify(OrderNotFound()) is None


def test_subclass_rule_on_a_subclass_of_the_parent_class() -> None:
    @retry_on(Boom)
    class Charge(ReliableTask):
        name = "unit.charge_mro"

    @cancel_on(ChildBoom)
    class Capture(Charge):
        name = "unit.capture_mro"

    assert isinstance(Capture._reliable_policy.classify(ChildBoom()), CancelRule)
    assert isinstance(Capture._reliable_policy.classify(Boom()), RetryRule)
    assert isinstance(Charge._reliable_policy.classify(ChildBoom()), RetryRule)


def test_function_task_on_a_class_base_inherits_and_overrides(app: Celery) -> None:
    @retry_on(Boom, attempts=3)
    @cancel_on(OrderNotFound)
    class Charge(ReliableTask):
        pass

    @discard_on(OrderNotFound)
    def refund() -> None: ...

    task = build(app, refund, base=Charge)
    assert rule_for(task, Boom()) is Charge._reliable_policy.classify(Boom())
    assert isinstance(rule_for(task, OrderNotFound()), DiscardRule)
    assert isinstance(Charge._reliable_policy.classify(OrderNotFound()), CancelRule)


def test_same_class_twice_on_one_class_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Boom"):

        @retry_on(Boom)
        @discard_on(Boom)
        class Charge(ReliableTask):
            name = "unit.charge_twice"


def test_same_class_on_the_class_and_on_run_raises_value_error() -> None:
    with pytest.raises(ValueError, match="Boom"):

        @retry_on(Boom)
        class Charge(ReliableTask):
            name = "unit.charge_class_and_run"

            @discard_on(Boom)
            def run(self) -> None: ...


# -- timeout and time limits -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "soft", "hard"),
    [(30, 30, 35), (100, 100, 110), (7.5, 7.5, 12.5), (50, 50, 55), (1000, 1000, 1100)],
)
def test_timeout_sets_soft_and_hard_limits(
    app: Celery, timeout: float, soft: float, hard: float
) -> None:
    def slow() -> None: ...

    task = build(app, slow, timeout=timeout)
    assert task.soft_time_limit == soft
    assert task.time_limit == hard


def test_timeout_on_a_class_and_inherited(app: Celery) -> None:
    class Slow(ReliableTask):
        timeout = 30

    assert (Slow.soft_time_limit, Slow.time_limit) == (30, 35)

    def child() -> None: ...

    task = build(app, child, base=Slow)
    assert (task.soft_time_limit, task.time_limit) == (30, 35)


def test_no_timeout_leaves_celery_limits_alone(app: Celery) -> None:
    def plain() -> None: ...

    def limited() -> None: ...

    assert build(app, plain).time_limit is None
    task = build(app, limited, soft_time_limit=10, time_limit=20)
    assert (task.soft_time_limit, task.time_limit) == (10, 20)


@pytest.mark.parametrize(
    "limits",
    [{"soft_time_limit": 10}, {"time_limit": 60}, {"soft_time_limit": 10, "time_limit": 60}],
)
def test_timeout_with_celery_limits_raises_value_error(
    app: Celery, limits: dict[str, float]
) -> None:
    def conflicting() -> None: ...

    with pytest.raises(ValueError, match="timeout"):
        build(app, conflicting, timeout=30, **limits)


@pytest.mark.parametrize("timeout", [0, -1, "30", True, float("nan"), float("inf")])
def test_bad_timeout_raises_value_error(app: Celery, timeout: object) -> None:
    def bad() -> None: ...

    with pytest.raises(ValueError, match="timeout"):
        build(app, bad, timeout=timeout)


def test_bad_timeout_on_a_class_raises_value_error() -> None:
    with pytest.raises(ValueError, match="timeout"):

        class Bad(ReliableTask):
            timeout = 0


# -- misspelt and custom options ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("timout", "timeout"),
        ("max_snooze", "max_snoozes"),
        ("retry_backof", "retry_backoff"),
        ("soft_time_limt", "soft_time_limit"),
        ("acks_lates", "acks_late"),
        ("autoretry_fro", "autoretry_for"),
    ],
)
def test_misspelt_options_raise_type_error_with_a_suggestion(
    app: Celery, typo: str, meant: str
) -> None:
    def task_with_typo() -> None: ...

    with pytest.raises(TypeError, match=f"did you mean '{meant}'"):
        build(app, task_with_typo, **{typo: 5})


def test_misspelt_attribute_on_a_class_raises_type_error() -> None:
    with pytest.raises(TypeError, match="did you mean 'timeout'"):

        class Typo(ReliableTask):
            timout = 5


def test_a_custom_attribute_is_allowed(app: Celery) -> None:
    def custom() -> None: ...

    task = build(app, custom, my_custom_flag=1)
    assert task.my_custom_flag == 1


@pytest.mark.parametrize(
    "option",
    [
        {"queue": "mailers"},
        {"routing_key": "mail"},
        {"exchange": "mail"},
        {"priority": 5},
        {"expires": 60},
        {"rate_limit": "10/s"},
        {"ignore_result": True},
        {"serializer": "json"},
        {"acks_late": True},
        {"reject_on_worker_lost": True},
        {"track_started": True},
        {"max_retries": 3},
        {"default_retry_delay": 5},
        {"autoretry_for": (Boom,)},
        {"retry_backoff": True},
        {"retry_backoff_max": 60},
        {"retry_jitter": False},
        {"throws": (Boom,)},
        {"typing": False},
        {"store_eager_result": True},
        {"max_snoozes": 3},
        {"timeout": None},
    ],
    ids=lambda option: next(iter(option)),
)
def test_celery_options_are_not_taken_for_typos(app: Celery, option: dict[str, Any]) -> None:
    def with_option() -> None: ...

    task = build(app, with_option, **option)
    ((name, value),) = option.items()
    assert getattr(task, name) == value


def test_max_snoozes_default_and_value(app: Celery) -> None:
    def default() -> None: ...

    def three() -> None: ...

    def zero() -> None: ...

    assert build(app, default).max_snoozes == 10
    assert build(app, three, max_snoozes=3).max_snoozes == 3
    assert build(app, zero, max_snoozes=0).max_snoozes == 0


@pytest.mark.parametrize("max_snoozes", [-1, 1.5, "3", True, None])
def test_bad_max_snoozes_raise_value_error(app: Celery, max_snoozes: object) -> None:
    def bad() -> None: ...

    with pytest.raises(ValueError, match="max_snoozes"):
        build(app, bad, max_snoozes=max_snoozes)


# -- eager execution ---------------------------------------------------------------------------


def test_returned_cancel_is_cancelled(app: Celery) -> None:
    def cancels() -> Cancel:
        return Cancel("order was deleted")

    result = build(app, cancels).apply()
    assert result.state == "CANCELLED"
    assert result.info["reason"] == "order was deleted"
    assert result.info["outcome"] == "cancelled"
    assert result.ready()
    assert result.get() == result.info


def test_raised_cancel_is_cancelled(app: Celery) -> None:
    def cancels() -> None:
        raise Cancel("nothing to do")

    result = build(app, cancels).apply()
    assert result.state == "CANCELLED"
    assert result.info["reason"] == "nothing to do"


def test_raised_discard_is_discarded(app: Celery) -> None:
    def discards() -> None:
        raise Discard("bad payload")

    result = build(app, discards).apply()
    assert result.state == "DISCARDED"
    # As from a worker (results.py): the exception is the info, and get() raises it.
    assert isinstance(result.info, Discard)
    assert result.info.reason == "bad payload"
    with pytest.raises(Discard, match="bad payload"):
        result.get()


def test_returned_discard_is_discarded(app: Celery) -> None:
    def discards() -> Discard:
        return Discard("bad payload")

    result = build(app, discards).apply()
    assert result.state == "DISCARDED"


def test_snooze_is_snoozed(app: Celery) -> None:
    calls: list[int] = []

    def snoozes() -> None:
        calls.append(1)
        raise Snooze(5, "not yet")

    result = build(app, snoozes).apply()
    assert result.state == "SNOOZED"
    assert result.info["reason"] == "not yet"
    assert result.info["retry_in"] == 5
    assert calls == [1]


def test_discard_on_rule_is_discarded(app: Celery) -> None:
    @discard_on(InvalidEmail)
    def sends() -> None:
        raise InvalidEmail("no @")

    result = build(app, sends).apply()
    assert result.state == "DISCARDED"
    assert isinstance(result.info, InvalidEmail)


def test_cancel_on_rule_is_cancelled(app: Celery) -> None:
    @cancel_on(OrderNotFound)
    def sends() -> None:
        raise OrderNotFound(42)

    result = build(app, sends).apply()
    assert result.state == "CANCELLED"


def test_retry_on_runs_the_body_attempts_times_then_fails(app: Celery) -> None:
    calls: list[int] = []

    @retry_on(Boom, wait=fixed(1), attempts=3)
    def always_fails(n: int) -> None:
        calls.append(n)
        raise Boom(f"failure {len(calls)}")

    result = build(app, always_fails).apply((7,))
    assert calls == [7, 7, 7]
    assert result.state == "FAILURE"
    assert isinstance(result.result, Boom)


def test_retry_on_subclass_of_declared_class_is_retried(app: Celery) -> None:
    calls: list[int] = []

    @retry_on(Boom, wait=fixed(1), attempts=2)
    def fails_with_subclass() -> None:
        calls.append(1)
        raise ChildBoom()

    result = build(app, fails_with_subclass).apply()
    assert len(calls) == 2
    assert result.state == "FAILURE"


def test_retry_then_success(app: Celery) -> None:
    calls: list[int] = []

    @retry_on(Boom, wait=fixed(1), attempts=5)
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise Boom()
        return "done"

    result = build(app, flaky).apply()
    assert len(calls) == 3
    assert result.state == "SUCCESS"
    assert result.result == "done"


def test_each_retry_on_call_has_its_own_counter(app: Celery) -> None:
    raised: list[str] = []
    sequence = [Boom, InvalidEmail, Boom, InvalidEmail, Boom]

    @retry_on(Boom, wait=fixed(1), attempts=3)
    @retry_on(InvalidEmail, wait=fixed(1), attempts=3)
    def alternates() -> None:
        exc_type = sequence[len(raised)]
        raised.append(exc_type.__name__)
        raise exc_type()

    result = build(app, alternates).apply()
    # Boom's third failure exhausts Boom's rule; InvalidEmail's counter is at 2 then.
    assert raised == ["Boom", "InvalidEmail", "Boom", "InvalidEmail", "Boom"]
    assert result.state == "FAILURE"
    assert isinstance(result.result, Boom)


def test_classes_listed_together_share_a_counter(app: Celery) -> None:
    raised: list[str] = []
    sequence = [Boom, InvalidEmail, Boom, InvalidEmail]

    @retry_on(Boom, InvalidEmail, wait=fixed(1), attempts=3)
    def alternates() -> None:
        exc_type = sequence[len(raised)]
        raised.append(exc_type.__name__)
        raise exc_type()

    result = build(app, alternates).apply()
    assert raised == ["Boom", "InvalidEmail", "Boom"]
    assert result.state == "FAILURE"


def test_unclassified_exception_fails_without_retry(app: Celery) -> None:
    calls: list[int] = []

    @retry_on(Boom)
    def fails() -> None:
        calls.append(1)
        raise Unclassified("surprise")

    result = build(app, fails).apply()
    assert calls == [1]
    assert result.state == "FAILURE"
    assert isinstance(result.result, Unclassified)


def test_unclassified_retry_mode_retries_with_configured_attempts(app: Celery) -> None:
    app.conf.reliable_unclassified = "retry"
    app.conf.reliable_unclassified_attempts = 2
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        raise Unclassified("surprise")

    result = build(app, fails).apply()
    assert calls == [1, 1]
    assert result.state == "FAILURE"


def test_class_based_task_runs_eagerly(app: Celery) -> None:
    calls: list[int] = []

    @retry_on(Boom, wait=fixed(1), attempts=2)
    class Charge(ReliableTask):
        name = "unit.charge_eager"

        def run(self, amount: int) -> None:
            calls.append(amount)
            raise Boom()

    task = app.register_task(Charge())
    result = task.apply((10,))
    assert calls == [10, 10]
    assert result.state == "FAILURE"


def test_success_is_stored_as_success(app: Celery) -> None:
    def adds(a: int, b: int) -> int:
        return a + b

    result = build(app, adds).apply((1, 2))
    assert result.state == "SUCCESS"
    assert result.result == 3


# -- direct calls -------------------------------------------------------------------------------


def test_direct_call_runs_the_body_unchanged(app: Celery) -> None:
    def adds(a: int, b: int) -> int:
        return a + b

    assert build(app, adds)(1, 2) == 3


def test_direct_call_returns_a_cancel_as_is(app: Celery) -> None:
    cancel = Cancel("gone")

    def cancels(a: int, b: int) -> Cancel:
        return cancel

    assert build(app, cancels)(1, 2) is cancel


def test_direct_call_propagates_exceptions_without_retry(app: Celery) -> None:
    calls: list[int] = []

    @retry_on(Boom, attempts=3)
    def fails(a: int, b: int) -> None:
        calls.append(a)
        raise Boom("direct")

    task = build(app, fails)
    with pytest.raises(Boom, match="direct"):
        task(1, 2)
    assert calls == [1]


def test_direct_call_propagates_a_raised_outcome(app: Celery) -> None:
    def discards() -> None:
        raise Discard("nope")

    with pytest.raises(Discard, match="nope"):
        build(app, discards)()


@pytest.mark.parametrize("method", ["serialize", "update_status", "store_result", "signature_for"])
def test_helper_methods_on_a_class_based_task_are_not_typos(method: str) -> None:
    def helper(self: Any, *args: Any) -> None: ...

    task_class = type("Charge", (ReliableTask,), {"name": f"unit.helper_{method}", method: helper})
    assert getattr(task_class, method) is helper


# -- one request per execution ---------------------------------------------------------


def test_apply_runs_the_body_on_the_tracers_request(app: Celery, outcomes: Any) -> None:
    """The body sees the request apply() pushed, not a copy: what it writes is kept
    until the execution ends, and one execution sends one outcome."""
    seen: list[Any] = []

    def body(self: Any) -> str:
        self.request.reliable_note = "written"
        seen.append(self.request)
        return "ok"

    task = build(app, body, bind=True, name="unit.request")
    after_body: list[Any] = []

    def read_request(sender: Any = None, task: Any = None, **_: Any) -> None:
        if sender is not None and sender.name == "unit.request":
            after_body.append((task.request, getattr(task.request, "reliable_note", None)))

    stack_before = len(task.request_stack.stack)
    task_postrun.connect(read_request, weak=False)
    try:
        result = task.apply()
    finally:
        task_postrun.disconnect(read_request)
    assert result.get() == "ok"
    assert len(seen) == 1
    assert seen[0].id == result.id
    # the tracer's own request, which task_postrun receivers read, holds the write
    assert after_body == [(seen[0], "written")]
    assert len(task.request_stack.stack) == stack_before
    assert [e.outcome for e in outcomes.events] == [Outcome.SUCCEEDED]


def test_a_body_calling_its_task_as_a_function_is_one_execution(app: Celery, outcomes: Any) -> None:
    def countdown(self: Any, n: int) -> int:
        assert current_task.name == "unit.countdown"
        return 0 if n == 0 else 1 + self(n - 1)

    task = build(app, countdown, bind=True, name="unit.countdown")
    assert task.apply((3,)).get() == 3
    assert [e.outcome for e in outcomes.events] == [Outcome.SUCCEEDED]
    assert task(2) == 2  # called directly, outside any worker: no execution at all
    assert len(outcomes.events) == 1


def test_a_request_pushed_by_hand_runs_as_one_execution(app: Celery, outcomes: Any) -> None:
    """Celery's own tests push a request and call the task: current_task is it."""

    def body(self: Any) -> str:
        assert current_task.name == self.name
        return str(self.request.id)

    task = build(app, body, bind=True, name="unit.by_hand")
    plain = build(app, body, bind=True, name="unit.by_hand_plain", base=Task)
    answers = []
    for each in (plain, task):
        each.push_request(id="by-hand-0")  # called_directly, as Celery's Context defaults
        try:
            # Celery 5.4's Task.__call__ pushes a fresh request (the id is lost), later
            # ones a copy: whatever plain Celery gives, ReliableTask gives the same.
            answers.append(each())
        finally:
            each.pop_request()
    assert answers[0] == answers[1]
    assert outcomes.events == []
    task.push_request(id="by-hand-1", retries=0, called_directly=False)  # as the tracer does
    try:
        assert task() == "by-hand-1"
    finally:
        task.pop_request()
    assert [(e.task_id, e.outcome) for e in outcomes.events] == [("by-hand-1", Outcome.SUCCEEDED)]


def test_an_eager_replace_by_the_same_task_is_a_new_execution(app: Celery, outcomes: Any) -> None:
    """Celery's eager replace() applies the new signature, with the same task id, from
    inside the body: the replacement is an execution of its own, with its own outcome."""

    def paginate(self: Any, page: int) -> Any:
        if page < 3:
            return self.replace(self.si(page + 1))
        return Cancel("no page 4")

    task = build(app, paginate, bind=True, name="unit.paginate")
    task.apply((1,))
    # innermost first; an eager replace() returns the replacement's result, so the
    # replaced executions end as a return does
    assert [e.outcome for e in outcomes.events] == [
        Outcome.CANCELLED,
        Outcome.SUCCEEDED,
        Outcome.SUCCEEDED,
    ]
    assert outcomes.events[0].reason == "no page 4"


def test_a_misspelt_setting_fails_eager_calls_too() -> None:
    app = Celery("typo_eager", broker="memory://", set_as_current=False)
    app.conf.update(
        reliable_database_url=None, reliable_unclasified="retry", task_always_eager=True
    )

    def noop() -> None:
        return None

    task = build(app, noop, name="unit.typo_eager")
    with pytest.raises(ImproperlyConfigured, match="did you mean 'reliable_unclassified'"):
        task.apply()
    with pytest.raises(ImproperlyConfigured, match="did you mean 'reliable_unclassified'"):
        task.delay()


# -- the app's own task class (task_cls) ------------------------------------------------


class ProjectTask(Task):  # type: ignore[type-arg]
    """A project's base, as ``Celery(task_cls="proj.base:Task")`` names it."""

    calls: list[str] = []

    def tenant(self) -> str:
        return "acme"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        ProjectTask.calls.append("enter")
        try:
            return super().__call__(*args, **kwargs)
        finally:
            ProjectTask.calls.append("exit")


def test_base_reliable_task_keeps_the_apps_task_class() -> None:
    app = Celery("own-base", task_cls=ProjectTask, set_as_current=False)
    app.conf.reliable_database_url = None
    seen: list[Any] = []

    def outcome(sender: Any = None, **fields: Any) -> None:
        seen.append(fields["outcome"])

    task_outcome.connect(outcome, weak=False)
    try:

        def work(x: int) -> str:
            ProjectTask.calls.append("body")
            return f"ok {x}"

        task = build(app, work)
        assert isinstance(task, ReliableTask) and isinstance(task, ProjectTask)
        assert task.tenant() == "acme"
        ProjectTask.calls.clear()
        assert task.apply((1,)).get() == "ok 1"
        # The project's __call__ runs around the body, inside the one execution.
        assert ProjectTask.calls == ["enter", "body", "exit"]
        assert seen == [Outcome.SUCCEEDED]
        assert type(task._get_current_object()).__name__ == "work"
    finally:
        task_outcome.disconnect(outcome)


def test_djangos_task_class_is_kept() -> None:
    from celery.contrib.django.task import DjangoTask

    app = Celery("django-base", task_cls=DjangoTask, set_as_current=False)
    app.conf.reliable_database_url = None

    def work() -> None: ...

    task = build(app, work)
    assert isinstance(task, DjangoTask)
    assert callable(task.delay_on_commit) and callable(task.apply_async_on_commit)
    assert not task._reliable_app_call, "DjangoTask has no __call__ of its own"


def test_an_app_task_class_that_cannot_be_combined_is_one_clear_error() -> None:
    class Audited:
        pass

    class AuditedReliable(ReliableTask, Audited):
        abstract = True

    class AuditedFirst(Audited, Task):  # type: ignore[type-arg]
        pass

    # (AuditedReliable, AuditedFirst) has no consistent MRO: Audited is after Task in
    # one and before it in the other.
    app = Celery("bad-base", task_cls=AuditedFirst, set_as_current=False)
    app.conf.reliable_database_url = None

    def work() -> None: ...

    with pytest.raises(ImproperlyConfigured, match="declare a base of both"):
        build(app, work, base=AuditedReliable)


def test_autoretry_budget_from_retry_kwargs_ends_exhausted(app: Celery) -> None:
    """Celery's budget is retry_kwargs["max_retries"] when set (it is passed to
    self.retry()): once it is spent the error is EXHAUSTED, not FAILED unclassified."""
    seen: list[Outcome] = []

    def outcome(sender: Any = None, **fields: Any) -> None:
        seen.append(fields["outcome"])

    def flaky() -> None:
        raise ValueError("down")

    task = build(
        app,
        flaky,
        autoretry_for=(ValueError,),
        retry_kwargs={"max_retries": 2, "countdown": 0},
        max_retries=10,
    )
    task_outcome.connect(outcome, weak=False)
    try:
        task.apply()
    finally:
        task_outcome.disconnect(outcome)
    assert seen == [Outcome.RETRIED, Outcome.RETRIED, Outcome.EXHAUSTED]


def test_the_body_calling_its_task_inside_the_apps_call_is_one_execution() -> None:
    app = Celery("own-base-nested", task_cls=ProjectTask, set_as_current=False)
    app.conf.reliable_database_url = None
    seen: list[Any] = []

    def outcome(sender: Any = None, **fields: Any) -> None:
        seen.append(fields["outcome"])

    def countdown(self: Any, n: int) -> int:
        return n if n == 0 else self(n - 1) + 1

    task = build(app, countdown, bind=True)
    task_outcome.connect(outcome, weak=False)
    try:
        assert task.apply((3,)).get() == 3
    finally:
        task_outcome.disconnect(outcome)
    assert seen == [Outcome.SUCCEEDED]


def test_an_internal_error_at_claim_is_failed_not_the_tasks_rules(app: Celery) -> None:
    """A keyed task whose app has no store (reliable_database_url None): the claim
    raises ImproperlyConfigured. That is ours, not the task's: FAILED and reported,
    never retried by the task's retry_on(Exception)."""
    seen: list[Any] = []

    def outcome(sender: Any = None, **fields: Any) -> None:
        seen.append((fields["outcome"], fields["reason"], fields["report"]))

    ran: list[int] = []

    @retry_on(Exception, wait=fixed(0.01), attempts=3)
    def charge(order_id: int) -> None:
        ran.append(order_id)

    task = build(app, charge, timeout=5, idempotency_key="charge:{order_id}")
    task_outcome.connect(outcome, weak=False)
    try:
        result = task.apply((7,))
    finally:
        task_outcome.disconnect(outcome)
    assert result.state == "FAILURE"
    assert isinstance(result.result, ImproperlyConfigured)
    ((got, reason, report),) = seen
    assert got is Outcome.FAILED and report
    assert reason.startswith("celery_reliable could not claim the idempotency key: ")
    assert "not in the task; the body did not run" in reason
    assert ran == []
