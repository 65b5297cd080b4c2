"""One execution of a ReliableTask: run the body, decide its one outcome, act on it.

The ways an execution ends, and what Celery is told:

* SUCCEEDED / DUPLICATE: the value is returned; Celery stores SUCCESS and runs links.
* RETRIED: RETRY is stored, the message is re-published with backoff and the
  per-rule counters in its headers, then ``Retry`` is raised; Celery acks (and, on 5.4
  and 5.5, stores RETRY again: a retry that already ended can be overwritten there).
* SNOOZED / CANCELLED / DISCARDED: our own state is stored, then ``Ignore`` is
  raised, so Celery's tracer stores nothing over it and acks the message.
* EXHAUSTED / FAILED: the exception is re-raised; Celery stores FAILURE, runs
  errbacks and logs the traceback.

Every side effect of an outcome happens before the message is acked. ``task_outcome``
is sent exactly once, after the re-publish and, for the terminal states, before the
state is stored (as for Celery's own FAILURE): whoever sees the state can find what
observers recorded for it, such as the dead letter. SNOOZED is stored before its
re-publish, so that it never overwrites the state of the run it schedules.

Deciding is in ``decisions.py`` (pure); this module runs the body and acts.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from time import monotonic
from traceback import format_exception
from typing import TYPE_CHECKING, Any, NoReturn, cast

from celery.app.task import Context
from celery.backends.base import BaseKeyValueStoreBackend, DisabledBackend
from celery.exceptions import (
    Ignore,
    ImproperlyConfigured,
    MaxRetriesExceededError,
    Reject,
    Retry,
)
from celery.states import SUCCESS

from celery_reliable import decisions
from celery_reliable.compat.autoretry import Autoretry
from celery_reliable.compat.celery_internals import (
    actual_ignore_result,
    tracer_reads_request_ignore_result,
)
from celery_reliable.config import settings_for
from celery_reliable.decisions import Decision, describe_exc
from celery_reliable.errors import (
    LimitKeyError,
    MissingDependency,
    ResultNotSerializable,
    StoreUnavailable,
    WrongArguments,
)
from celery_reliable.headers import HEADER, Counters, once_per_task_id
from celery_reliable.longrun.heartbeat import Heartbeat
from celery_reliable.outcomes import Discard, Outcome, OutcomeRequest
from celery_reliable.policy import IDEMPOTENCY_LABEL, DiscardRule, RetryRule
from celery_reliable.results import DUPLICATE_OF
from celery_reliable.signals import OutcomeEvent, execution_started, task_outcome
from celery_reliable.wiring import ensure_observers

if TYPE_CHECKING:
    from celery_reliable.claims import ReceiptHolder
    from celery_reliable.limits.slots import Held
    from celery_reliable.longrun.steps import JobSteps
    from celery_reliable.task import ReliableTask

logger = logging.getLogger("celery_reliable.execution")

#: Outcomes after which the job runs again (a unique lock stays held).
_NOT_TERMINAL = frozenset({Outcome.RETRIED, Outcome.SNOOZED})

#: Set on a request once its execution has ended.
ENDED_ATTR = "reliable_ended"

#: ``Execution._claim`` found the key free: run the body.
_OWNED = object()

#: Every success decides the same: one Decision, never mutated, not built per execution.
_SUCCEEDED = Decision(Outcome.SUCCEEDED, "")

#: Results every serializer stores: not tried before they are returned (the common
#: case costs nothing).
_PLAIN_RESULTS = frozenset({type(None), str, int, float, bool})


class _Local(threading.local):
    execution: Execution | None = None
    #: task id -> (state, value): the outcome dict, or a DISCARDED job's exception.
    eager_outcomes: dict[str, tuple[str, Any]]

    def __init__(self) -> None:
        self.eager_outcomes = {}


_local = _Local()


def current_execution() -> Execution | None:
    """The execution running in this thread (None outside a ReliableTask's body)."""
    return _local.execution


def pop_eager_outcome(task_id: str) -> tuple[str, Any] | None:
    """The custom state an eager execution stored, for ``ReliableTask.apply``."""
    return _local.eager_outcomes.pop(task_id, None)


class Execution:
    """The state of one execution. Created per call; everything per-class is precomputed."""

    __slots__ = (
        "_counters",
        "args",
        "attempt",
        "heartbeat",
        "held",
        "kwargs",
        "nested_calls",
        "queue",
        "receipt",
        "replaced",
        "request",
        "signature",
        "started",
        "steps",
        "task",
        "transaction",
    )

    def __init__(
        self,
        task: ReliableTask,
        request: Context,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.task = task
        self.request = request
        self.args = args
        self.kwargs = kwargs
        self.attempt = (request.retries or 0) + 1
        self._counters: Counters | None = None
        delivery_info = request.delivery_info or {}
        self.queue: str | None = delivery_info.get("routing_key")
        self.replaced = False
        #: How deep the body is in calls of its own task as a function (task.py).
        self.nested_calls = 0
        self.started = 0.0
        #: The idempotency receipt this execution holds, if its task has a key.
        self.receipt: ReceiptHolder | None = None
        #: The re-published signature of a retry (eager apply() runs it).
        self.signature: Any = None
        #: The heartbeat of a task with ``heartbeat_timeout`` (longrun/heartbeat.py).
        self.heartbeat: Heartbeat | None = None
        #: The limits' slots this execution holds (limits/slots.py).
        self.held: Held | None = None
        #: The job's steps, once the body entered one (longrun/steps.py).
        self.steps: JobSteps | None = None
        #: The innermost ``self.atomic()`` transaction open in the body, if any.
        self.transaction: Any = None

    @property
    def counters(self) -> Counters:
        """Parsed from the headers only when an outcome needs them (not on success)."""
        if self._counters is None:
            self._counters = Counters.from_headers(self.request.headers, self.request.id)
        return self._counters

    # -- running ---------------------------------------------------------------------

    def run(self, body: Callable[..., Any]) -> Any:
        self.started = monotonic()
        ensure_observers(self.task.app)
        if execution_started.receivers:
            execution_started.send(
                sender=self.task,
                task_id=self.request.id,
                attempt=self.attempt,
                request=self.request,
                queue=self.queue,
            )
        previous, _local.execution = _local.execution, self
        if self.task._reliable_heartbeat_timeout is not None:
            self.heartbeat = self._heartbeat(self.task._reliable_heartbeat_timeout)
        try:
            return self._run(body)
        finally:
            _local.execution = previous
            if self.held is not None:
                self.held.give_back()
            if self.heartbeat is not None:
                self.heartbeat.end()
            # One request, one execution (task.py reads it): what calls the task while
            # this request is still on the stack is a function call.
            setattr(self.request, ENDED_ATTR, True)

    def _heartbeat(self, timeout: float) -> Heartbeat:
        from celery_reliable.store import store_for

        task = self.task
        try:
            store = store_for(task.app)
        except (ImproperlyConfigured, MissingDependency):
            # A store that cannot be built (the worker refuses to start on it; this is
            # an eager call or a script): the beats are not written.
            store = None
        return Heartbeat(
            task.name,
            cast(str, self.request.id),
            timeout,
            store=store,
            hostname=getattr(self.request, "hostname", None),
            lease=task._reliable_lease,
        )

    def _run(self, body: Callable[..., Any]) -> Any:
        if self.task._reliable_slots is not None and not self.request.is_eager:
            # An eager call (apply(), task_always_eager, a test) runs here and now, as
            # Celery's own rate_limit does not apply to it either.
            self._take_slots()
            if self.heartbeat is not None:
                self.heartbeat.slots = self.held
        # A message from the outbox may have been published twice (a relay killed
        # between its publish and its delete), and so may a beat's slot (a beat that
        # took it over from one that died): it claims its task id, as a key (on a
        # worker with a store). For every other message this costs one lookup in its
        # custom headers.
        if self.task._reliable_key is not None or (
            once_per_task_id(self.request.headers)
            and settings_for(self.task.app).database_url is not None
        ):
            answer = self._claim()
            if answer is not _OWNED:
                return answer  # a duplicate's stored result (other answers raised)
            if self.heartbeat is not None:
                self.heartbeat.receipt = self.receipt
        try:
            if self.heartbeat is None:
                retval = body(*self.args, **self.kwargs)
            else:
                retval = self.heartbeat.run(body, self.args, self.kwargs)
        except OutcomeRequest as requested:
            decision = self.decide_request(requested)
        except Retry as retry:
            # self.retry() / autoretry_for: Celery already re-published the message.
            self._give_back(Outcome.RETRIED)
            self.emit(
                Decision(
                    Outcome.RETRIED,
                    _retry_reason(retry),
                    retry.exc,
                    retry_in=_seconds_until(retry.when),
                    label=self._autoretry_label(retry.exc),
                )
            )
            raise
        except Ignore as ignore:
            self._on_ignore(ignore)
            raise
        except Reject as reject:
            self._on_reject(reject)
            raise
        except MaxRetriesExceededError as exc:
            # Celery's own retry budget (self.retry + max_retries) ran out.
            decision = Decision(Outcome.EXHAUSTED, describe_exc(exc), exc)
        except Exception as exc:
            wrong = _wrong_arguments(self.task, exc, self.args, self.kwargs)
            if wrong is None:
                decision = self.decide_exception(exc)
            else:
                # No rule applies: no retry can make these arguments fit. Reported, as
                # it is a publisher's (or a deploy's) bug.
                decision = Decision(Outcome.DISCARDED, describe_exc(wrong), wrong, report=True)
        else:
            if isinstance(retval, OutcomeRequest):
                decision = self.decide_request(retval)
            else:
                unstorable = self._unstorable(retval)
                if unstorable is None:
                    self._succeeded(retval)
                    return retval
                decision = Decision(
                    Outcome.FAILED, describe_exc(unstorable), unstorable, report=True
                )
        return self.act(decision)

    def _unstorable(self, retval: Any) -> ResultNotSerializable | None:
        """The error the result backend would meet storing ``retval``, found before
        the outcome is told: else this execution would be SUCCEEDED to its metrics
        and receipt while Celery stores FAILURE (EncodeError) as its state."""
        if type(retval) in _PLAIN_RESULTS:
            return None
        task, request = self.task, self.request
        backend = task.backend
        if (
            isinstance(backend, DisabledBackend)
            or (request.is_eager and not task.store_eager_result)
            or actual_ignore_result(task, request)
            or getattr(request, "ignore_result", False)
        ):
            return None  # nothing is stored
        try:
            backend.encode(backend.prepare_value(retval))
        except Exception as exc:  # kombu's EncodeError, or a serializer's own error
            serializer = getattr(backend, "serializer", None)
            error = ResultNotSerializable(
                f"the body returned a value of type {type(retval).__qualname__!r} that the "
                f"result backend cannot serialize as {serializer} ({exc}); the body ran, its "
                "result is lost: return plain data (str, numbers, lists, dicts), or set "
                "ignore_result=True if nobody reads it"
            )
            error.__cause__ = exc
            return error
        return None

    def _claim(self) -> Any:
        """Take the idempotency receipt; ``_OWNED`` to run the body, else the result."""
        from celery_reliable import claims

        try:
            got = claims.ReceiptHolder.take(
                self.task, cast(str, self.request.id), self.args, self.kwargs
            )
        except StoreUnavailable as exc:  # the built-in rule (or the task's own) retries it
            return self.act(self.decide_exception(exc))
        except Exception as exc:
            # Not the task's error: no rule of the task (retry_on(Exception) included)
            # may retry a bug or a setting of ours into a storm.
            return self.act(
                Decision(
                    Outcome.FAILED,
                    f"celery_reliable could not claim the idempotency key: {describe_exc(exc)} "
                    "(an error in celery_reliable or its settings, not in the task; the body "
                    "did not run)",
                    exc,
                    report=True,
                )
            )
        if isinstance(got, claims.ReceiptHolder):
            self.receipt = got
            return _OWNED
        keyed = self.task._reliable_key is not None
        if isinstance(got, claims.Duplicate):
            receipt = got.receipt
            reason = (
                f"idempotency key {receipt.key!r} already succeeded (task {receipt.task_id})"
                if keyed
                else "this outbox message already ran and succeeded (a relay published it twice)"
            )
            self.emit(Decision(Outcome.DUPLICATE, reason, label=IDEMPOTENCY_LABEL))
            self._release_unique(Outcome.DUPLICATE)
            self._store_duplicate(got.value, receipt.task_id)
            return got.value
        if isinstance(got, claims.Busy):
            receipt = got.receipt
            state = "returning" if receipt.result_pending else "in progress"
            reason = (
                f"idempotency key {receipt.key!r} is {state} in task {receipt.task_id}"
                if keyed
                else "this outbox message is running elsewhere (a relay published it twice)"
            )
            retry_in = got.retry_in(self.counters.snoozes, self.task.max_snoozes)
            return self.act(
                decisions.snooze(
                    retry_in,
                    reason,
                    None,
                    self.counters,
                    self.task.max_snoozes,
                    label=IDEMPOTENCY_LABEL,
                )
            )
        return self.act(
            Decision(Outcome.DISCARDED, describe_exc(got.exc), got.exc, label=IDEMPOTENCY_LABEL)
        )

    def _take_slots(self) -> None:
        """Take a slot of each of the task's limits, or end SNOOZED until about when one
        frees (raises: the body does not run)."""
        from celery_reliable.limits import slots

        try:
            got = slots.take(
                self.task, cast(str, self.request.id), self.args, self.kwargs, self.counters.since
            )
        except LimitKeyError as exc:  # these arguments never fit: no retry helps
            self.act(Decision(Outcome.DISCARDED, describe_exc(exc), exc, report=True))
        except StoreUnavailable as exc:  # LimitsUnavailable: the built-in rule retries it
            self.act(self.decide_exception(exc))
        except Exception as exc:
            self.act(
                Decision(
                    Outcome.FAILED,
                    f"celery_reliable could not take the task's limits: {describe_exc(exc)} "
                    "(an error in celery_reliable or its settings, not in the task; the body "
                    "did not run)",
                    exc,
                    report=True,
                )
            )
        if isinstance(got, slots.Waiting):
            self.act(decisions.limited(got.seconds, got.reason, self.counters, got.since_ms))
        self.held = got

    def _store_duplicate(self, value: Any, done_by: str) -> None:
        """Store SUCCESS with the stored result and, in the meta, the task id that did
        the work (``results.duplicate_of``): a caller can tell a DUPLICATE apart while
        ``get()`` returns the same value. Key-value backends only (Redis, ...): the
        others keep Celery's own fields. The tracer's own store is then skipped (5.6+)
        or refused by the backend, which never overwrites a SUCCESS."""
        task, request = self.task, self.request
        if (
            request.is_eager
            or not isinstance(task.backend, BaseKeyValueStoreBackend)
            or actual_ignore_result(task, request)
            or getattr(request, "ignore_result", False)
        ):
            return
        task_id = cast(str, request.id)
        backend: Any = task.backend  # Celery's stubs lack the key-value internals
        try:
            meta = backend._get_result_meta(
                result=backend.encode_result(value, SUCCESS),
                state=SUCCESS,
                traceback=None,
                request=request,
            )
            meta["task_id"] = task_id
            meta[DUPLICATE_OF] = done_by
            backend._set_with_state(
                backend.get_key_for_task(task_id), backend.encode(meta), SUCCESS
            )
        except Exception:
            # The tracer stores SUCCESS as for any task: only the mark is lost.
            logger.exception(
                "task %s[%s]: could not store the DUPLICATE result", task.name, task_id
            )
            return
        if tracer_reads_request_ignore_result:
            # Like a retry stored first: mark_as_done still counts a chord part.
            request.ignore_result = True

    def _succeeded(self, retval: Any) -> None:
        if self.receipt is not None:
            self.receipt.complete(retval)
        self._release_unique(Outcome.SUCCEEDED)
        self.emit(_SUCCEEDED)

    def _give_back(self, outcome: Outcome) -> None:
        """Every outcome but success releases the claim; terminal ones the unique lock."""
        if self.receipt is not None:
            self.receipt.release()
        self._release_unique(outcome)

    def _release_unique(self, outcome: Outcome) -> None:
        spec = self.task._reliable_unique
        if spec is None or spec.release != "terminal" or outcome in _NOT_TERMINAL:
            return
        from celery_reliable import unique

        unique.release(self.task, cast(str, self.request.id), self.args, self.kwargs)

    # -- deciding (pure functions in decisions.py) ---------------------------------

    def decide_request(self, requested: OutcomeRequest) -> Decision:
        return decisions.decide_request(requested, self.counters, self.task.max_snoozes)

    def decide_exception(self, exc: Exception) -> Decision:
        task = self.task
        gave_up = self._autoretry_gave_up(exc)
        return decisions.decide_exception(
            exc,
            policy=task._reliable_policy,
            counters=self.counters,
            attempt=self.attempt,
            max_snoozes=task.max_snoozes,
            unclassified=settings_for(task.app).unclassified_rule,
            celery_gave_up=gave_up,
            celery_rule=None if gave_up is None else self._autoretry_label(exc),
        )

    def _autoretry_label(self, exc: BaseException | None) -> str | None:
        """The label of ``autoretry_for`` when ``exc`` is one of its classes: Celery's
        wrapper retried it (or gave up on it). A ``self.retry(exc=...)`` of the body
        with such an exception counts too: the two cannot be told apart."""
        if exc is None:  # self.retry() with no exception: no rule's
            return None
        autoretry = type(self.task).reliable_autoretry()
        if (
            autoretry is None
            or not isinstance(exc, autoretry.exc_types)
            or isinstance(exc, autoretry.excluded)
        ):
            return None
        return autoretry.label

    def _autoretry_gave_up(self, exc: Exception) -> str | None:
        """Celery's ``autoretry_for`` re-raises the error once its budget is spent
        (``retry_kwargs["max_retries"]``, else ``max_retries``: read as the audit
        reads it, autoretry.py). Only on the exception path."""
        autoretry = Autoretry.of(self.task)
        if (
            autoretry is None
            or not isinstance(exc, autoretry.exc_types)
            or isinstance(exc, autoretry.excluded)
        ):
            return None
        max_retries = autoretry.max_retries
        if max_retries is None or (self.request.retries or 0) < max_retries:
            return None
        return f"autoretry_for: max_retries={max_retries} exhausted"

    # -- acting ----------------------------------------------------------------------

    def act(self, decision: Decision) -> NoReturn:
        outcome = decision.outcome
        self._give_back(outcome)
        if outcome is Outcome.RETRIED:
            stored_first = self._store_retry_first(decision)
            self._republish_or_fall_back(decision, retries=self.attempt)
            if stored_first:
                # After the re-publish (whose options copy the request's ignore_result):
                # the tracer's own RETRY store is skipped.
                self.request.ignore_result = True
            self.emit(decision)
            raise Retry(
                exc=cast(Exception, decision.exc),
                when=cast(Any, decision.retry_in),
                sig=self.signature,
            )
        if outcome is Outcome.SNOOZED:
            # Stored first: once re-published, the next run may end (and store its
            # state) before this thread would get to it. If the re-publish fails, the
            # FAILURE stored after it replaces this state.
            self.store_state(decision)
            self._republish_or_fall_back(decision, retries=self.attempt - 1)
            self.emit(decision)
            raise Ignore(decision.reason)
        if outcome in (Outcome.CANCELLED, Outcome.DISCARDED):
            if outcome is Outcome.DISCARDED:
                self._callback(decision)
            self.emit(decision)
            self.store_state(decision)
            raise Ignore(decision.reason)
        # EXHAUSTED / FAILED: Celery stores FAILURE and runs errbacks.
        self._callback(decision)
        self.emit(decision)
        exc = decision.exc
        assert exc is not None
        raise exc

    def _store_retry_first(self, decision: Decision) -> bool:
        return self.store_retry_first(decision.exc)

    def store_retry_first(self, exc: BaseException | None) -> bool:
        """Store RETRY before the retry message exists, where Celery can then be told
        not to store it again (5.6+). Celery stores it after the re-publish: a retry
        that ended within its few milliseconds had its FAILURE or SUCCESS overwritten
        by this run's RETRY, and the job looked stuck in RETRY for good. Our own
        retries and ``self.retry()`` (``autoretry_for`` too: task.py) both come here."""
        task, request = self.task, self.request
        if (
            request.is_eager
            or not tracer_reads_request_ignore_result
            or actual_ignore_result(task, request)  # nothing stored either way
            or task.store_errors_even_if_ignored  # Celery would store it anyway
        ):
            return False
        if not isinstance(exc, Exception) or request.id is None:
            return False
        try:
            task.backend.mark_as_retry(
                request.id, exc, "".join(format_exception(exc)), request=request
            )
        except Exception:
            logger.exception(
                "task %s[%s]: could not store state RETRY in the result backend",
                task.name,
                request.id,
            )
            return False
        return True

    def _republish_or_fall_back(self, decision: Decision, retries: int) -> None:
        """Re-publish the message for a retry or a snooze; what if the broker says no.

        With ``acks_late`` the message is still ours: ``Reject(requeue=True)`` puts it
        back and the broker redelivers it (without the backoff, but not lost).
        Without it the message is already acked, so the execution ends FAILED.
        """
        task, request = self.task, self.request
        counters = decision.counters or self.counters
        headers = dict(request.headers or {})
        headers[HEADER] = counters.as_header()
        signature = task.signature_from_request(
            request,
            tuple(request.args or ()),
            dict(request.kwargs or {}),
            countdown=decision.retry_in,
            retries=retries,
            headers=headers,
        )
        self.signature = signature
        if request.is_eager:
            # apply() runs the retry signature itself; a snooze cannot wait in eager mode.
            return
        try:
            signature.apply_async()
        except Exception as publish_error:
            self._on_publish_failure(decision, publish_error)

    def _on_publish_failure(self, decision: Decision, error: Exception) -> NoReturn:
        what = "retry" if decision.outcome is Outcome.RETRIED else "snooze"
        logger.error(
            "task %s[%s]: could not re-publish the %s: %r",
            self.task.name,
            self.request.id,
            what,
            error,
        )
        if self.message_still_ours():
            fallback = Decision(
                decision.outcome,
                f"{decision.reason}; re-publish failed ({error!r}), the broker redelivers "
                "the message",
                decision.exc,
                report=decision.report,
                rule=decision.rule,
                label=decision.label,
            )
            self.emit(fallback)
            raise Reject(error, requeue=True)
        failed = Decision(
            Outcome.FAILED,
            f"{decision.reason}; the {what} could not be re-published: {error!r}",
            decision.exc if decision.exc is not None else error,
            report=True,
            rule=decision.rule,
            label=decision.label,
        )
        self.emit(failed)
        exc = failed.exc
        assert exc is not None
        raise exc

    def message_still_ours(self) -> bool:
        """Can ``Reject(requeue=True)`` still give the message back to the broker?"""
        return bool(self.task.acks_late)

    def store_state(self, decision: Decision) -> None:
        """Store SNOOZED / CANCELLED / DISCARDED where Celery stores states."""
        task, request = self.task, self.request
        task_id = cast(str, request.id)
        state = decision.outcome.state
        meta = outcome_meta(decision, self.attempt)
        eager_value: Any = meta
        if decision.outcome is Outcome.DISCARDED:
            # Celery's own exception fields (results.py makes DISCARDED an exception
            # state): get() raises the recorded exception on every backend.
            eager_value = recorded_exception(decision)
            meta.update(task.backend.prepare_exception(eager_value, serializer="json"))
        if request.is_eager:
            _local.eager_outcomes[task_id] = (state, eager_value)
        if actual_ignore_result(task, request):
            store = False
        else:
            store = task.store_eager_result if request.is_eager else True
        try:
            if decision.outcome is Outcome.SNOOZED:
                # The job runs again: its end is still to come, so a chord must not
                # count this part yet (mark_as_done would).
                if store and not getattr(request, "ignore_result", False):
                    task.backend.store_result(task_id, meta, state, request=request)
            else:
                # mark_as_done takes any state: it stores it and, inside a chord,
                # counts this part so the chord does not wait for it forever.
                task.backend.mark_as_done(
                    task_id, meta, request=request, store_result=store, state=state
                )
        except Exception:
            logger.exception(
                "task %s[%s]: could not store state %s in the result backend",
                task.name,
                request.id,
                state,
            )

    def _callback(self, decision: Decision) -> None:
        rule = decision.rule
        callback = None
        if isinstance(rule, RetryRule) and decision.outcome is Outcome.EXHAUSTED:
            callback = rule.on_exhausted
        elif isinstance(rule, DiscardRule):
            callback = rule.on_discard
        if callback is None or decision.exc is None:
            return
        try:
            callback(self.task, decision.exc)
        except Exception:
            # A callback is the user's side effect; it never changes the outcome.
            logger.exception(
                "task %s[%s]: %s callback %r raised; the outcome stays %s",
                self.task.name,
                self.request.id,
                decision.outcome.value,
                callback,
                decision.outcome.value,
            )

    def _on_ignore(self, ignore: Ignore) -> None:
        if self.replaced:
            # The replacement owns the work now: the key counts as done.
            if self.receipt is not None:
                self.receipt.complete(None)
            self.emit(Decision(Outcome.SUCCEEDED, "replaced by a new task"))
            return
        self._give_back(Outcome.CANCELLED)
        self.emit(Decision(Outcome.CANCELLED, f"Ignore: {ignore}" if str(ignore) else "Ignore"))

    def _on_reject(self, reject: Reject) -> None:
        requeue = bool(getattr(reject, "requeue", False))
        reason = f"Reject(requeue={requeue}): {getattr(reject, 'reason', None)!r}"
        if requeue and self.task.acks_late:
            decision = Decision(Outcome.SNOOZED, reason, retry_in=0.0)
        else:
            decision = Decision(Outcome.DISCARDED, reason)
        self._give_back(decision.outcome)
        self.emit(decision)

    # -- telling ---------------------------------------------------------------------

    def emit(self, decision: Decision) -> None:
        if not task_outcome.receivers:
            return
        OutcomeEvent(
            task=self.task,
            task_id=self.request.id,
            outcome=decision.outcome,
            attempt=self.attempt,
            exc=decision.exc,
            reason=decision.reason,
            duration=monotonic() - self.started,
            retry_in=decision.retry_in,
            report=decision.report,
            queue=self.queue,
            request=self.request,
            rule=decision.label,
        ).send()


def _wrong_arguments(
    task: ReliableTask, exc: Exception, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> WrongArguments | None:
    """``exc`` is the TypeError of calling the body with arguments that do not fit it
    (not one raised inside it): then the error, saying which and how to fix it."""
    traceback = exc.__traceback__
    if not isinstance(exc, TypeError) or traceback is None or traceback.tb_next is not None:
        # A frame below ours: the body started, and the TypeError is its own.
        return None
    try:
        # Not through functools.wraps: a decorator may change the parameters.
        signature = inspect.signature(task.run, follow_wrapped=False)
    except (TypeError, ValueError):  # no signature to read
        return None
    try:
        signature.bind(*args, **kwargs)
    except TypeError as misfit:
        error = WrongArguments(
            f"the message's arguments do not fit {task.name}{signature}: {misfit}; a "
            "retry replays the same arguments: change the task to accept them, then retry "
            "the dead letter, or purge it (and fix the publisher)"
        )
        error.__cause__ = exc
        return error
    return None


def recorded_exception(decision: Decision) -> BaseException:
    """What ``get()`` of a DISCARDED job raises: the exception that decided it (a
    ``discard_on`` match, ``WrongArguments``, ``Discard(...)`` itself), or a
    ``Discard`` carrying the reason when none did (``max_snoozes`` used up)."""
    exc = decision.exc
    if isinstance(exc, BaseException) and (
        not isinstance(exc, OutcomeRequest) or isinstance(exc, Discard)
    ):
        return exc
    return Discard(decision.reason)


def outcome_meta(decision: Decision, attempt: int) -> dict[str, Any]:
    """What the result backend stores for our own states: ``AsyncResult.info`` of a
    SNOOZED or CANCELLED job; for DISCARDED, Celery's exception fields are added."""
    exc = decision.exc
    meta: dict[str, Any] = {
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        "attempt": attempt,
        "exc_type": type(exc).__name__ if exc is not None else None,
        "exc_module": type(exc).__module__ if exc is not None else None,
        "exc_message": str(exc) if exc is not None else None,
    }
    if decision.retry_in is not None:
        meta["retry_in"] = decision.retry_in
    return meta


def _retry_reason(retry: Retry) -> str:
    if retry.exc is not None:
        return describe_exc(retry.exc)
    return retry.message or "retry requested"


def _seconds_until(when: Any) -> float | None:
    if when is None:
        return None
    if isinstance(when, datetime):
        now = datetime.now(timezone.utc if when.tzinfo else None)
        return max((when - now).total_seconds(), 0.0)
    try:
        return float(when)
    except (TypeError, ValueError):
        return None
