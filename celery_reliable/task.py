"""ReliableTask: the Celery ``Task`` base class that gives every execution one outcome.

Everything that can be done once per task class is done in ``__init_subclass__``
(options validated, time limits set, declarations composed into a policy), so the
per-execution path only runs the body, classifies an exception by a cached lookup
and sends one signal.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from celery import Celery, Task
from celery.exceptions import ImproperlyConfigured
from celery.result import EagerResult
from celery.states import IGNORED
from celery.utils import uuid
from kombu.exceptions import EncodeError

from celery_reliable import options as task_options
from celery_reliable import wiring
from celery_reliable.backoff import exponential
from celery_reliable.compat.app_task_class import with_app_task_class
from celery_reliable.compat.autoretry import Autoretry
from celery_reliable.compat.celery_internals import task_stack
from celery_reliable.config import refuse_a_changed_database_url, settings_for
from celery_reliable.errors import StoreUnavailable
from celery_reliable.execution import (
    ENDED_ATTR,
    Execution,
    current_execution,
    pop_eager_outcome,
)
from celery_reliable.headers import HEADER
from celery_reliable.idempotency import KeySpec, UniqueSpec
from celery_reliable.limits.spec import TaskLimits
from celery_reliable.longrun.heartbeat import check_progress
from celery_reliable.longrun.steps import Step, open_step
from celery_reliable.outcomes import CANCELLED_STATE
from celery_reliable.policy import RULES_ATTR, Policy, Rule, make_retry_rule
from celery_reliable.results import make_our_states_terminal

if TYPE_CHECKING:
    from celery_reliable.limits.slots import ClassSlots


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
    ``heartbeat_timeout``
        Seconds the body may go without calling ``self.heartbeat()``. A longer silence
        raises ``HeartbeatTimeout`` in it (classified like any exception), long before
        the time limit; a keyed task's lease is then this plus a grace, renewed by
        each beat (docs/long-tasks.md).
    ``max_snoozes``
        How many times an execution may snooze before it is DISCARDED (default 10).
    ``idempotency_key``
        A format string over the task's parameters (``"charge:{order_id}"``) or a
        callable ``(*args, **kwargs) -> str``. Each execution claims a receipt first;
        a key that already succeeded is a DUPLICATE. Needs ``timeout``.
    ``unique``
        ``{"period": seconds, "keys": [names], "release": "period" | "terminal"}``:
        publishing while the key is held returns the holder's result instead.
    ``dead_letter_redact``
        Store no arguments in this task's dead letters (personal data).
    ``waive``
        ``{"gate": "reason"}``: production-readiness gates (``celery reliable check``)
        this task does not need, each with the reason shown in the audit. Merged with
        the waivers of a parent class.
    """

    #: Seconds before the soft time limit; see the class docstring.
    timeout: ClassVar[float | None] = None
    soft_time_limit: float | None  # type: ignore[assignment]  # Celery's stubs say int
    time_limit: float | None  # type: ignore[assignment]
    #: Seconds the body may go without ``self.heartbeat()``; see the class docstring.
    heartbeat_timeout: ClassVar[float | None] = None
    #: Snoozes allowed before the job is DISCARDED.
    max_snoozes: ClassVar[int] = 10
    #: Idempotency key: format string or callable; see the class docstring.
    idempotency_key: ClassVar[Any] = None
    #: Unique enqueue: see the class docstring.
    unique: ClassVar[Any] = None
    #: ``[concurrency(n, key=...), rate(n, per=..., key=...)]`` from
    #: ``celery_reliable.limits``: global limits, across every worker.
    limits: ClassVar[Any] = None
    #: Keep no arguments in this task's dead letters.
    dead_letter_redact: ClassVar[bool] = False
    #: Gates of ``celery reliable check`` this task waives: gate -> reason.
    waive: ClassVar[Any] = None
    #: The worker's request class (Celery's, by name): a revoked job that was cancelled
    #: (``celery reliable cancel``) ends CANCELLED, not REVOKED, and a paused task's
    #: (``celery reliable pause``) is held back. A task class with a request class of
    #: its own derives it from this one to keep that.
    Request = "celery_reliable.worker.pauses:PausableRequest"

    _reliable_key: ClassVar[KeySpec | None] = None
    #: ``heartbeat_timeout`` validated (None: the execution has no heartbeat).
    _reliable_heartbeat_timeout: ClassVar[float | None] = None
    _reliable_unique: ClassVar[UniqueSpec | None] = None
    #: ``limits`` checked when the class is built (None: no limit).
    _reliable_limits: ClassVar[TaskLimits | None] = None
    #: ... and with their leases, once the class is bound (limits/slots.py).
    _reliable_slots: ClassVar[ClassSlots | None] = None
    #: Seconds an idempotency claim lasts: hard time limit + margin (set when bound).
    _reliable_lease: ClassVar[float] = 0.0
    #: ``waive`` validated, with the parent classes' waivers merged in.
    _reliable_waivers: ClassVar[dict[str, str]] = {}

    #: The effective declarations of this task class (inherited and own).
    _reliable_policy: ClassVar[Policy] = Policy()

    #: The app's task class defines ``__call__``: the body runs through it.
    _reliable_app_call: ClassVar[bool] = False

    #: ``reliable_autoretry()``'s answer, kept per class once read.
    _reliable_autoretry: ClassVar[tuple[Autoretry | None]]

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        # Celery instantiates each task class once: that instance is also of the app's
        # own task class (DjangoTask's delay_on_commit, a project's base), see
        # compat/app_task_class.py.
        return super().__new__(with_app_task_class(cls, ReliableTask))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        owner = f"task {cls.__dict__.get('name') or cls.__qualname__}"
        task_options.check_typos(
            cls.__dict__,
            known=_known_names(),
            owner=owner,
        )
        cls.max_snoozes = task_options.check_max_snoozes(owner, cls.max_snoozes)
        if "heartbeat_timeout" in cls.__dict__:
            cls._reliable_heartbeat_timeout = task_options.check_heartbeat_timeout(
                owner, cls.__dict__["heartbeat_timeout"]
            )
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
        if not isinstance(cls.dead_letter_redact, bool):
            raise ValueError(f"{owner}: dead_letter_redact must be True or False")
        if "waive" in cls.__dict__:
            cls._reliable_waivers = {
                **cls._reliable_waivers,
                **task_options.check_waive(owner, cls.__dict__["waive"]),
            }
        if cls.idempotency_key is not None:
            cls._reliable_key = KeySpec.build(
                owner, cls.idempotency_key, cls.__dict__.get("run", cls.run)
            )
        if cls.unique is not None:
            cls._reliable_unique = UniqueSpec.build(
                owner, cls.unique, cls.__dict__.get("run", cls.run)
            )
        if "limits" in cls.__dict__:
            cls._reliable_limits = TaskLimits.build(
                owner,
                str(cls.__dict__.get("name") or cls.__qualname__),
                cls.__dict__["limits"],
                cls.__dict__.get("run", cls.run),
            )
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
        from celery_reliable.claims import heartbeat_lease_seconds, lease_seconds
        from celery_reliable.compat.celery_internals import time_limits

        beat = cls._reliable_heartbeat_timeout
        if beat is None and cls._reliable_key is None and cls._reliable_limits is None:
            wiring.install(app)  # the app's settings are not read here: they may not be final
            return
        _, hard = time_limits(cls, app)
        if cls._reliable_limits is not None:
            cls._reliable_limits = cls._reliable_limits.named(cls.name)
            cls._reliable_slots = _class_slots(cls.name, cls._reliable_limits, beat, hard)
        if beat is not None and hard and beat >= hard:
            raise ImproperlyConfigured(
                f"task {cls.name}: heartbeat_timeout={beat:g} is not shorter than its hard "
                f"time limit ({hard:g}s), so it would never end a stuck execution first: "
                "lower it, or drop it"
            )
        if beat is not None:
            # Each beat renews the lease; a silent execution is ended (killed, on
            # prefork) within heartbeat_timeout + grace, before the lease ends. (Also
            # without a key: a message from the outbox claims its task id.)
            cls._reliable_lease = heartbeat_lease_seconds(beat)
        elif cls._reliable_key is not None:
            if not hard:
                raise ImproperlyConfigured(
                    f"task {cls.name}: idempotency_key needs timeout= (or time_limit=, or "
                    "heartbeat_timeout=): a claim's lease is derived from it, so that a live "
                    "worker is always stopped before another can take its key over"
                )
            cls._reliable_lease = lease_seconds(hard)
        wiring.install(app)

    def retry(
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Exception | None = None,
        throw: bool = True,
        *more: Any,
        **options: Any,
    ) -> Any:
        """Celery's ``self.retry()`` (and ``autoretry_for``, which calls it), with the
        RETRY state stored before the retry is published, as for a ``retry_on`` rule:
        Celery stores it after, and a retry that ended within those milliseconds had
        its final state overwritten by this run's RETRY (``execution.py``)."""
        from celery.exceptions import Retry

        execution = current_execution()
        given = (
            more[2] if len(more) > 2 else options.get("max_retries")
        )  # (eta, countdown, max_retries)
        limit = self.max_retries if given is None else given  # None: the task's, as Celery reads it
        stored = (
            throw
            and execution is not None
            and execution.request is self.request
            # Past its max_retries Celery raises instead: FAILURE is stored, not RETRY.
            and (limit is None or (self.request.retries or 0) < limit)
            and execution.store_retry_first(exc if exc is not None else sys.exc_info()[1])
        )
        try:
            return super().retry(args, kwargs, exc, throw, *more, **options)
        except Retry:
            if stored:
                # After the publish (whose options copy ignore_result from the
                # request): the tracer's own RETRY store is skipped.
                self.request.ignore_result = True
            raise

    def heartbeat(self, progress: float | None = None, **details: Any) -> None:
        """The body is alive: call it at least every ``heartbeat_timeout`` seconds.

        ``progress`` (0 to 1) and ``details`` (JSON values) describe how far it got.
        Renews the idempotency claim's lease (at most one store write a second). Raises
        ``Cancel`` once the job is cancelled (``celery reliable cancel``): the
        execution ends ``CANCELLED``. A no-op outside an execution, and for a task
        without ``heartbeat_timeout``.
        """
        fraction = check_progress(progress)
        execution = current_execution()
        if execution is not None and execution.heartbeat is not None:
            execution.heartbeat.beat(fraction, details)

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        *more: Any,
        **options: Any,
    ) -> Any:
        """Celery's ``apply_async``; with ``unique=``, a held key returns its holder."""
        try:
            return self._publish(args, kwargs, task_id, *more, **options)
        except EncodeError as exc:
            # kombu says only "Object of type X is not JSON serializable": name the
            # task, the serializer and the way out. Still an EncodeError, so that code
            # catching kombu's error keeps working.
            serializer = options.get("serializer") or self.serializer
            raise EncodeError(
                f"task {self.name}: its arguments cannot be serialized as {serializer} "
                f"({exc}); nothing was published: pass plain data (ids, strings, numbers, "
                "lists, dicts) and load objects inside the task"
            ) from exc

    def _publish(
        self,
        args: Any,
        kwargs: Any,
        task_id: str | None,
        *more: Any,
        **options: Any,
    ) -> Any:
        if (self._reliable_unique is not None or settings_for(self.app).outbox) and (
            _outbox_capturing()
        ):
            # publish_in: the message is being built for the outbox's row.
            if self._reliable_unique is not None:
                from celery_reliable.errors import OutboxError

                raise OutboxError(
                    f"task {self.name} has unique=, which publish_in does not take (its lock "
                    "would be held outside your transaction, and kept if it rolled back): "
                    "publish it after the commit, or drop unique= (an outbox message already "
                    "runs once)"
                )
            return super().apply_async(args, kwargs, task_id, *more, **options)
        if (
            settings_for(self.app).outbox
            and not _is_republish(options)
            and not self.app.conf.task_always_eager
        ):
            # CELERY_RELIABLE_OUTBOX: inside Django's transaction.atomic(), the outbox.
            # (Never a retry or a snooze: raised inside atomic(), its rollback would
            # take the message with it.)
            from celery_reliable.outbox.django import POSITIONAL, divert

            named = {**dict(zip(POSITIONAL, more, strict=False)), **options}
            diverted = divert(self, args, kwargs, {"task_id": task_id, **named})
            if diverted is not None:
                return diverted
        if (
            self._reliable_unique is not None
            and not _is_republish(options)
            and not (self.app.conf.task_always_eager)
        ):
            from celery_reliable.unique import holder_of

            task_id = task_id or uuid()
            holder = holder_of(self, task_id, args, kwargs)
            if holder is not None:
                return self.AsyncResult(holder)
            try:
                return super().apply_async(args, kwargs, task_id, *more, **options)
            except Exception:
                from celery_reliable.unique import release

                release(self, task_id, args, kwargs)
                raise
        return super().apply_async(args, kwargs, task_id, *more, **options)

    @contextmanager
    def atomic(self) -> Iterator[Any]:
        """A transaction on the store's database, committed when the block ends: a
        SQLAlchemy session, or Django's ``transaction.atomic()`` (yielding Django's
        connection) when ``reliable_database_url = "django"``.

        With an ``idempotency_key``, the receipt is marked succeeded in the same
        transaction: the writes made inside it happen exactly once per key. Once the
        job has entered a step, the receipt is only held in it (the claim checked, and
        with a heartbeat renewed) and marked when the body returns; a
        ``step.advance()`` inside commits with the block (longrun/steps.py).
        """
        from celery_reliable.store import require_store

        execution = current_execution()
        if execution is None or execution.task is not self:
            with require_store(self.app, f"task {self.name}: atomic()").atomic() as transaction:
                yield transaction
            return
        receipt = execution.receipt
        opened = (
            receipt.atomic(complete=execution.steps is None)
            if receipt is not None
            else require_store(self.app, f"task {self.name}: atomic()").atomic()
        )
        outer = execution.transaction
        with opened as transaction:
            execution.transaction = transaction
            try:
                yield transaction
            finally:
                execution.transaction = outer

    def step(self, name: str) -> Step:
        """``with self.step(name) as step:``: a step of this job, skipped when it
        finished in an earlier execution of the job (a retry, a redelivery). The job is
        the ``idempotency_key`` when the task has one, else the task id.
        ``step.cursor`` is the last ``step.advance(value)`` (a JSON value), None at
        first; inside ``self.atomic()`` an advance commits with it. See
        docs/long-tasks.md#steps; raises ``StepError`` outside an execution."""
        return open_step(self, current_execution(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.called_directly or getattr(request, ENDED_ATTR, False):
            # task(...) called as a plain function: Celery runs the body, so do we. The
            # same holds while an ended execution's request is still on the stack: Celery
            # calls an old-style errback (request, exc, traceback) inline after a failure,
            # and when the errback is the failing task itself, that call is not a second
            # execution of the request (which would be a second outcome and dead letter).
            return super().__call__(*args, **kwargs)
        running = current_execution()
        if (
            running is not None
            and running.task is self
            and (running.request is request or running.nested_calls)
        ):
            # The body calls its own task as a function: part of this execution, not a
            # new one. (Celery pushes a copy of the request for the nested body, so a
            # call nested deeper is recognised by the count. A new tracer, as an eager
            # self.replace() or apply() has, pushes a request of its own: a new one.)
            running.nested_calls += 1
            try:
                return super().__call__(*args, **kwargs)
            finally:
                running.nested_calls -= 1
        # The tracer (or apply()) already pushed this execution's request. Celery's
        # Task.__call__ would push a copy of it, and the body's writes to self.request
        # (chain, callbacks, custom attributes) would be lost when it is popped; so the
        # body runs on the tracer's own request, as it does for a Task without __call__.
        pushed = task_stack.top is not self
        if pushed:
            task_stack.push(self)  # a request pushed by hand, outside the tracer
        body = self._run_through_app_call if self._reliable_app_call else self.run
        try:
            return Execution(self, request, args, kwargs).run(body)
        finally:
            if pushed:
                task_stack.pop()

    def _run_through_app_call(self, *args: Any, **kwargs: Any) -> Any:
        """The body, inside the ``__call__`` of the app's task class (which ends in
        Celery's, pushing a copy of the request: what the body writes to
        ``self.request`` stays in that copy, as it would under that class alone)."""
        running = current_execution()
        assert running is not None  # called by Execution.run only
        # The body sees that copy: a call of its own task from it is nested, as below.
        running.nested_calls += 1
        try:
            return super().__call__(*args, **kwargs)
        finally:
            running.nested_calls -= 1

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
        # A misspelt reliable_* setting fails here as it does at worker start (once:
        # the settings are cached), not inside a signal receiver that would log it.
        settings_for(self.app)
        # Eager calls are where tests change settings: a store URL changed after first
        # use is refused here (a worker never re-reads them).
        refuse_a_changed_database_url(self.app)
        result = super().apply(args, kwargs, *apply_args, **options)
        stored = pop_eager_outcome(result.id)
        if stored is not None and str(result.state) == IGNORED:
            state, value = stored
            return OutcomeEagerResult(result.id, value, state, name=self.name)
        return result

    @classmethod
    def reliable_rules(cls) -> list[Rule]:
        """The task's effective declarations, for reports and audits."""
        return cls._reliable_policy.rules

    @classmethod
    def reliable_autoretry(cls) -> Autoretry | None:
        """Celery's ``autoretry_for`` of this task class as autoretry.py reads it; read
        once per class, at its first retry (the options are all set by then)."""
        read: tuple[Autoretry | None] | None = cls.__dict__.get("_reliable_autoretry")
        if read is None:
            read = (Autoretry.of(cls),)
            cls._reliable_autoretry = read
        return read[0]


class OutcomeEagerResult(EagerResult):  # type: ignore[type-arg]
    """An eager job that ended in one of our states: ``get()`` answers as an
    ``AsyncResult`` does (results.py): a CANCELLED job's outcome dict, a DISCARDED
    one's exception raised."""

    def get(self, *args: Any, **kwargs: Any) -> Any:
        if self.state == CANCELLED_STATE:
            return self.result
        return super().get(*args, **kwargs)


def _outbox_capturing() -> bool:
    from celery_reliable.outbox.message import capturing

    return capturing()


def _is_republish(options: dict[str, Any]) -> bool:
    """A retry or snooze of a job already running: its unique lock is its own."""
    return bool(options.get("retries")) or HEADER in (options.get("headers") or {})


# CANCELLED and DISCARDED end a job: AsyncResult.get() and ready() must know it, in
# workers and in the callers that import their tasks (results.py).
make_our_states_terminal()

# Built in: a store that cannot be reached at claim time is retried (the body never
# runs without its claim). A task may override it with its own rule for the class.
ReliableTask._reliable_policy = Policy.compose(
    None,
    [make_retry_rule([StoreUnavailable], wait=exponential(cap=60), attempts=10)],
)


def _parent_policy(cls: type) -> Policy | None:
    for base in cls.__mro__[1:]:
        policy = base.__dict__.get("_reliable_policy")
        if isinstance(policy, Policy):
            return policy
    return None


_KNOWN: frozenset[str] | None = None


def _class_slots(
    name: str, limits: TaskLimits, beat: float | None, hard: float | None
) -> ClassSlots:
    """A concurrency slot is a lease: as long as an idempotency claim's, for the same
    reason (a live holder is always stopped before its slot can be taken over)."""
    from celery_reliable.claims import heartbeat_lease_seconds, lease_seconds
    from celery_reliable.limits.slots import ClassSlots

    if beat is not None:
        lease = heartbeat_lease_seconds(beat)
    elif hard:
        lease = lease_seconds(hard)
    elif limits.has_concurrency:
        raise ImproperlyConfigured(
            f"task {name}: a concurrency limit needs timeout= (or time_limit=, or "
            "heartbeat_timeout=): a slot is a lease derived from it, so that the slot of a "
            "worker that died is freed"
        )
    else:
        lease = 0.0  # rate limits hold nothing
    return ClassSlots.of(limits, lease)


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
