"""ReliableTask: the Celery ``Task`` base class that gives every execution one outcome.

Everything that can be done once per task class is done in ``__init_subclass__``
(options validated, time limits set, declarations composed into a policy), so the
per-execution path only runs the body, classifies an exception by a cached lookup
and sends one signal.
"""

from __future__ import annotations

from typing import Any, ClassVar

from celery import Celery, Task
from celery.result import EagerResult
from celery.states import IGNORED

from celery_reliable import options as task_options
from celery_reliable.execution import Execution, current_execution, pop_eager_outcome
from celery_reliable.policy import RULES_ATTR, Policy, Rule


def _own_function_rules(cls: type) -> list[Rule]:
    """Declarations on the task function (``@retry_on`` under ``@app.task``)."""
    run = cls.__dict__.get("run")
    function = getattr(run, "__func__", run)
    return list(getattr(function, RULES_ATTR, ()))


class ReliableTask(Task):  # type: ignore[type-arg]
    """Swap ``base=ReliableTask`` into a task to give each execution one explicit outcome.

    Task options it adds (validated when the task class is built):

    ``timeout``
        Seconds. Sets ``soft_time_limit=timeout`` and a hard ``time_limit`` a grace
        later (max(5 s, 10 %)). ``SoftTimeLimitExceeded`` is classified like any
        other exception, so ``retry_on(SoftTimeLimitExceeded)`` works.
    ``max_snoozes``
        How many times an execution may snooze before it is DISCARDED (default 10).
    """

    #: Seconds before the soft time limit; see the class docstring.
    timeout: ClassVar[float | None] = None
    soft_time_limit: float | None  # type: ignore[assignment]  # Celery's stubs say int
    time_limit: float | None  # type: ignore[assignment]
    #: Snoozes allowed before the job is DISCARDED.
    max_snoozes: ClassVar[int] = 10

    #: The effective declarations of this task class (inherited and own).
    _reliable_policy: ClassVar[Policy] = Policy()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner = f"task {cls.__dict__.get('name') or cls.__qualname__}"
        task_options.check_typos(
            cls.__dict__,
            known=_known_names(),
            owner=owner,
        )
        cls.max_snoozes = task_options.check_max_snoozes(owner, cls.max_snoozes)
        if "timeout" in cls.__dict__:
            limits = task_options.check_timeout(
                owner,
                cls.__dict__["timeout"],
                cls.__dict__.get("soft_time_limit"),
                cls.__dict__.get("time_limit"),
            )
            if limits is not None:
                cls.soft_time_limit = limits.soft_time_limit
                cls.time_limit = limits.time_limit
        own = [*cls.__dict__.get(RULES_ATTR, ()), *_own_function_rules(cls)]
        cls._reliable_policy = Policy.compose(_parent_policy(cls), own)

    @classmethod
    def __reliable_declare__(cls, rule: Rule) -> None:
        """A declaration applied to the class itself (``@retry_on`` above ``class``)."""
        own = [*cls.__dict__.get(RULES_ATTR, ()), rule]
        policy = Policy.compose(_parent_policy(cls), [*own, *_own_function_rules(cls)])
        setattr(cls, RULES_ATTR, own)
        cls._reliable_policy = policy

    @classmethod
    def on_bound(cls, app: Celery) -> None:
        from celery_reliable.wiring import install

        install(app)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly:
            # task(...) called as a plain function: Celery runs the body, so do we.
            return super().__call__(*args, **kwargs)
        return Execution(self, request, args, kwargs).run(super().__call__)

    def on_replace(self, sig: Any) -> Any:
        # self.replace() ends this execution with Ignore; it handed its work on, so
        # the outcome is SUCCEEDED, not CANCELLED.
        execution = current_execution()
        if execution is not None and execution.task is self:
            execution.replaced = True
        return super().on_replace(sig)

    def apply(
        self,
        args: Any = None,
        kwargs: Any = None,
        *apply_args: Any,
        **options: Any,
    ) -> Any:
        """Eager execution; our own states (SNOOZED, CANCELLED, DISCARDED) show on the result."""
        result = super().apply(args, kwargs, *apply_args, **options)
        stored = pop_eager_outcome(result.id)
        if stored is not None and str(result.state) == IGNORED:
            state, meta = stored
            return EagerResult(result.id, meta, state, name=self.name)
        return result

    @classmethod
    def reliable_rules(cls) -> list[Rule]:
        """The task's effective declarations, for reports and audits."""
        return cls._reliable_policy.rules


def _parent_policy(cls: type) -> Policy | None:
    for base in cls.__mro__[1:]:
        policy = base.__dict__.get("_reliable_policy")
        if isinstance(policy, Policy):
            return policy
    return None


_KNOWN: frozenset[str] | None = None


def _known_names() -> frozenset[str]:
    global _KNOWN  # noqa: PLW0603 - computed once, on the first task class
    if _KNOWN is None:
        _KNOWN = frozenset(
            {
                *dir(ReliableTask),
                *task_options.CELERY_DECORATOR_OPTIONS,
                *task_options.RELIABLE_OPTIONS,
            }
        )
    return _KNOWN
