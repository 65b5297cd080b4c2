"""One execution of a ReliableTask: run the body, decide its one outcome, act on it.

The ways an execution ends, and what Celery is told:

* SUCCEEDED / DUPLICATE: the value is returned; Celery stores SUCCESS and runs links.
* RETRIED: the message is re-published with backoff and the per-rule counters in its
  headers, then ``Retry`` is raised; Celery stores RETRY and acks.
* SNOOZED / CANCELLED / DISCARDED: our own state is stored, then ``Ignore`` is
  raised, so Celery's tracer stores nothing over it and acks the message.
* EXHAUSTED / FAILED: the exception is re-raised; Celery stores FAILURE, runs
  errbacks and logs the traceback.

Every side effect of an outcome (re-publish, dead letter, state) happens before the
message is acked, and ``task_outcome`` is sent exactly once, after them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from time import monotonic
from typing import TYPE_CHECKING, Any, NoReturn, cast

from celery.app import task as celery_task
from celery.app.task import Context
from celery.exceptions import Ignore, MaxRetriesExceededError, Reject, Retry

from celery_reliable.backoff import compute_delay
from celery_reliable.config import settings_for
from celery_reliable.errors import LeaseLost
from celery_reliable.outcomes import (
    Cancel,
    Discard,
    Outcome,
    OutcomeRequest,
    Snooze,
)
from celery_reliable.policy import CancelRule, DiscardRule, RetryRule, Rule
from celery_reliable.signals import execution_started, task_outcome

if TYPE_CHECKING:
    from celery_reliable.store import Claim
    from celery_reliable.task import ReliableTask

logger = logging.getLogger("celery_reliable.execution")

# Celery's own rule for "is this result ignored" (request overrides task); not in the
# type stubs, so looked up once here.
_get_actual_ignore_result: Callable[[Any, Any], bool] = getattr(  # noqa: B009
    celery_task, "get_actual_ignore_result"
)

#: Outcomes after which the job runs again (a unique lock stays held).
_NOT_TERMINAL = frozenset({Outcome.RETRIED, Outcome.SNOOZED})

#: ``Execution._claim`` found the key free: run the body.
_OWNED = object()

#: Retries remembered in the header, and the characters kept of each reason: enough for
#: an error report to show the way to it, little enough to keep messages small.
MAX_HISTORY = 10
MAX_NOTE = 200

#: The message header with the publish time (epoch seconds), stamped on every published
#: task by a ``before_task_publish`` receiver; ``queue_time`` is measured from it.
SENT_AT_HEADER = "reliable_sent_at"

#: The message header that carries our counters across re-publishes:
#: ``{"attempts": {rule_id: failed executions}, "snoozes": n, "history": [...]}``.
HEADER = "reliable"

#: Headers of ours, never copied into what a dead letter re-publishes.
OWN_HEADERS = frozenset({HEADER, SENT_AT_HEADER})


class _Local(threading.local):
    execution: Execution | None = None
    eager_outcomes: dict[str, tuple[str, dict[str, Any]]]

    def __init__(self) -> None:
        self.eager_outcomes = {}


_local = _Local()


def current_execution() -> Execution | None:
    """The execution running in this thread (None outside a ReliableTask's body)."""
    return _local.execution


def pop_eager_outcome(task_id: str) -> tuple[str, dict[str, Any]] | None:
    """The custom state an eager execution stored, for ``ReliableTask.apply``."""
    return _local.eager_outcomes.pop(task_id, None)


@dataclass
class Counters:
    """Per-rule failed-execution counts, the snooze count and the last retries' reasons,
    from the message headers."""

    attempts: dict[str, int] = field(default_factory=dict)
    snoozes: int = 0
    #: ``[attempt, epoch seconds, reason]`` of the last retries, oldest first: what an
    #: error report shows of the retries that led to it.
    history: list[list[Any]] = field(default_factory=list)

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None, task_id: str | None) -> Counters:
        raw = headers.get(HEADER) if headers else None
        if raw is None:
            return cls()
        try:
            attempts = raw.get("attempts") or {}
            snoozes = raw.get("snoozes") or 0
            parsed = {str(key): int(value) for key, value in attempts.items()}
            if any(value < 0 for value in parsed.values()) or int(snoozes) < 0:
                raise ValueError("negative counter")
            history = [[int(n), float(at), str(text)] for n, at, text in raw.get("history") or ()]
            return cls(attempts=parsed, snoozes=int(snoozes), history=history)
        except (AttributeError, TypeError, ValueError):
            # A malformed header must not stop the job: start the counters afresh and
            # say so, rather than crash or guess.
            logger.warning(
                "task %s: ignoring malformed %r header %r; attempt counters start afresh",
                task_id,
                HEADER,
                raw,
            )
            return cls()

    def with_failure(self, rule_id: str) -> Counters:
        attempts = dict(self.attempts)
        attempts[rule_id] = attempts.get(rule_id, 0) + 1
        return Counters(attempts=attempts, snoozes=self.snoozes, history=self.history)

    def with_retry_note(self, attempt: int, reason: str) -> Counters:
        note = [attempt, time.time(), reason[:MAX_NOTE]]
        history = [*self.history, note][-MAX_HISTORY:]
        return Counters(attempts=self.attempts, snoozes=self.snoozes, history=history)

    def with_snooze(self) -> Counters:
        return Counters(
            attempts=dict(self.attempts), snoozes=self.snoozes + 1, history=self.history
        )

    def as_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"attempts": self.attempts, "snoozes": self.snoozes}
        if self.history:
            header["history"] = self.history
        return header


@dataclass
class Decision:
    outcome: Outcome
    reason: str
    exc: BaseException | None = None
    retry_in: float | None = None
    report: bool = False
    rule: Rule | None = None
    counters: Counters | None = None


def describe_exc(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Execution:
    """The state of one execution. Created per call; everything per-class is precomputed."""

    __slots__ = (
        "_counters",
        "args",
        "attempt",
        "claim",
        "kwargs",
        "queue",
        "replaced",
        "request",
        "signature",
        "started",
        "task",
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
        self.started = 0.0
        #: The idempotency receipt this execution holds, if its task has a key.
        self.claim: Claim | None = None
        #: The re-published signature of a retry (eager apply() runs it).
        self.signature: Any = None

    @property
    def counters(self) -> Counters:
        """Parsed from the headers only when an outcome needs them (not on success)."""
        if self._counters is None:
            self._counters = Counters.from_headers(self.request.headers, self.request.id)
        return self._counters

    # -- running ---------------------------------------------------------------------

    def run(self, body: Callable[..., Any]) -> Any:
        self.started = monotonic()
        if execution_started.receivers:
            execution_started.send(
                sender=self.task,
                task_id=self.request.id,
                attempt=self.attempt,
                request=self.request,
                queue=self.queue,
            )
        previous, _local.execution = _local.execution, self
        try:
            return self._run(body)
        finally:
            _local.execution = previous

    def _run(self, body: Callable[..., Any]) -> Any:
        if self.task._reliable_key is not None:
            answer = self._claim()
            if answer is not _OWNED:
                return answer  # a duplicate's stored result (other answers raised)
        try:
            retval = body(*self.args, **self.kwargs)
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
            decision = self.decide_exception(exc)
        else:
            if not isinstance(retval, OutcomeRequest):
                self._succeeded(retval)
                return retval
            decision = self.decide_request(retval)
        return self.act(decision)

    def _claim(self) -> Any:
        """Take the idempotency receipt; ``_OWNED`` to run the body, else the result."""
        from celery_reliable import claims

        try:
            got = claims.claim(self.task, cast(str, self.request.id), self.args, self.kwargs)
        except Exception as exc:  # StoreUnavailable: the built-in rule retries it
            return self.act(self.decide_exception(exc))
        if isinstance(got, claims.Claim):
            self.claim = got
            return _OWNED
        if isinstance(got, claims.Duplicate):
            receipt = got.receipt
            self.emit(
                Decision(
                    Outcome.DUPLICATE,
                    f"idempotency key {receipt.key!r} already succeeded (task {receipt.task_id})",
                )
            )
            self._release_unique(Outcome.DUPLICATE)
            return got.value
        if isinstance(got, claims.Busy):
            receipt = got.receipt
            reason = f"idempotency key {receipt.key!r} is in progress in task {receipt.task_id}"
            retry_in = got.retry_in(self.counters.snoozes, self.task.max_snoozes)
            return self.act(self._snooze_decision(retry_in, reason, None))
        return self.act(Decision(Outcome.DISCARDED, describe_exc(got.exc), got.exc))

    def _succeeded(self, retval: Any) -> None:
        if self.claim is not None:
            from celery_reliable import claims

            claims.complete(self.task, self.claim, retval)
        self._release_unique(Outcome.SUCCEEDED)
        self.emit(Decision(Outcome.SUCCEEDED, ""))

    def _give_back(self, outcome: Outcome) -> None:
        """Every outcome but success releases the claim; terminal ones the unique lock."""
        if self.claim is not None:
            from celery_reliable import claims

            claims.release(self.task, self.claim)
        self._release_unique(outcome)

    def _release_unique(self, outcome: Outcome) -> None:
        spec = self.task._reliable_unique
        if spec is None or spec.release != "terminal" or outcome in _NOT_TERMINAL:
            return
        from celery_reliable import unique

        unique.release(self.task, cast(str, self.request.id), self.args, self.kwargs)

    # -- deciding --------------------------------------------------------------------

    def decide_request(self, requested: OutcomeRequest) -> Decision:
        if isinstance(requested, Snooze):
            return self._snooze_decision(requested.seconds, requested.reason, requested)
        if isinstance(requested, Cancel):
            return Decision(Outcome.CANCELLED, requested.reason or "cancelled", None)
        if isinstance(requested, Discard):
            return Decision(Outcome.DISCARDED, requested.reason or "discarded", requested)
        raise TypeError(f"unknown outcome request {requested!r}")  # pragma: no cover

    def _snooze_decision(self, seconds: float, reason: str, exc: BaseException | None) -> Decision:
        limit = self.task.max_snoozes
        if self.counters.snoozes >= limit:
            return Decision(
                Outcome.DISCARDED,
                f"snoozed {self.counters.snoozes} times, the limit (max_snoozes={limit}); "
                f"last: {reason}",
                exc,
            )
        return Decision(
            Outcome.SNOOZED, reason, exc, retry_in=seconds, counters=self.counters.with_snooze()
        )

    def decide_exception(self, exc: Exception) -> Decision:
        if isinstance(exc, LeaseLost):
            return self._snooze_decision(1.0, describe_exc(exc), exc)
        rule = self.task._reliable_policy.classify(exc)
        if rule is None and self._autoretry_gave_up(exc):
            return Decision(
                Outcome.EXHAUSTED,
                f"{describe_exc(exc)} (autoretry_for: max_retries={self.task.max_retries} "
                "exhausted)",
                exc,
                report=True,
            )
        if rule is None:
            rule = settings_for(self.task.app).unclassified_rule
            if rule is None:
                return Decision(
                    Outcome.FAILED, f"{describe_exc(exc)} (unclassified)", exc, report=True
                )
        return self._apply_rule(rule, exc)

    def _autoretry_gave_up(self, exc: Exception) -> bool:
        """Celery's ``autoretry_for`` re-raises the error once ``max_retries`` is spent."""
        task = self.task
        autoretry_for = tuple(getattr(task, "autoretry_for", ()) or ())
        if not autoretry_for or not isinstance(exc, autoretry_for):
            return False
        if isinstance(exc, tuple(getattr(task, "dont_autoretry_for", ()) or ())):
            return False
        max_retries = task.max_retries
        return max_retries is not None and (self.request.retries or 0) >= max_retries

    def _apply_rule(self, rule: Rule, exc: Exception) -> Decision:
        if isinstance(rule, CancelRule):
            return Decision(Outcome.CANCELLED, describe_exc(exc), exc, rule=rule)
        if isinstance(rule, DiscardRule):
            return Decision(
                Outcome.DISCARDED, describe_exc(exc), exc, report=rule.report, rule=rule
            )
        counters = self.counters.with_failure(rule.rule_id)
        used = counters.attempts[rule.rule_id]
        if used >= rule.attempts:
            return Decision(
                Outcome.EXHAUSTED,
                f"{describe_exc(exc)} (attempts exhausted: {used}/{rule.attempts})",
                exc,
                report=True,
                rule=rule,
            )
        delay = compute_delay(rule.wait, used, exc, rule.jitter)
        reason = f"{describe_exc(exc)} (attempt {used}/{rule.attempts})"
        return Decision(
            Outcome.RETRIED,
            reason,
            exc,
            retry_in=delay,
            report=rule.report,
            rule=rule,
            counters=counters.with_retry_note(self.attempt, reason),
        )

    # -- acting ----------------------------------------------------------------------

    def act(self, decision: Decision) -> NoReturn:
        outcome = decision.outcome
        self._give_back(outcome)
        if outcome is Outcome.RETRIED:
            self._republish_or_fall_back(decision, retries=self.attempt)
            self.emit(decision)
            raise Retry(
                exc=cast(Exception, decision.exc),
                when=cast(Any, decision.retry_in),
                sig=self.signature,
            )
        if outcome is Outcome.SNOOZED:
            self._republish_or_fall_back(decision, retries=self.attempt - 1)
            self.store_state(decision)
            self.emit(decision)
            raise Ignore(decision.reason)
        if outcome in (Outcome.CANCELLED, Outcome.DISCARDED):
            if outcome is Outcome.DISCARDED:
                self._callback(decision)
            self.store_state(decision)
            self.emit(decision)
            raise Ignore(decision.reason)
        # EXHAUSTED / FAILED: Celery stores FAILURE and runs errbacks.
        self._callback(decision)
        self.emit(decision)
        exc = decision.exc
        assert exc is not None
        raise exc

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
        if self.task.acks_late:
            fallback = Decision(
                decision.outcome,
                f"{decision.reason}; re-publish failed ({error!r}), the broker redelivers "
                "the message",
                decision.exc,
                report=decision.report,
                rule=decision.rule,
            )
            self.emit(fallback)
            raise Reject(error, requeue=True)
        failed = Decision(
            Outcome.FAILED,
            f"{decision.reason}; the {what} could not be re-published: {error!r}",
            decision.exc if decision.exc is not None else error,
            report=True,
            rule=decision.rule,
        )
        self.emit(failed)
        exc = failed.exc
        assert exc is not None
        raise exc

    def store_state(self, decision: Decision) -> None:
        """Store SNOOZED / CANCELLED / DISCARDED where Celery stores states."""
        task, request = self.task, self.request
        task_id = cast(str, request.id)
        state = decision.outcome.state
        meta = outcome_meta(decision, self.attempt)
        if request.is_eager:
            _local.eager_outcomes[task_id] = (state, meta)
        if _get_actual_ignore_result(task, request):
            store = False
        else:
            store = task.store_eager_result if request.is_eager else True
        try:
            # mark_as_done takes any state: it stores it and, inside a chord, counts
            # this part so the chord does not wait for it forever.
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
            if self.claim is not None:
                from celery_reliable import claims

                claims.complete(self.task, self.claim, None)
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
        task_outcome.send(
            sender=self.task,
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
        )


def outcome_meta(decision: Decision, attempt: int) -> dict[str, Any]:
    """What ``AsyncResult.info`` holds for our own states."""
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


_external_reports: dict[str, float] = {}
_external_lock = threading.Lock()


def _first_external_report(task_id: str | None, exc: BaseException) -> bool:
    """Celery sends ``task_failure`` twice for one hard time limit (from ``on_timeout``
    and again when the pool reports the job): report the execution once."""
    if task_id is None:
        return True
    now = monotonic()
    limit = exc.args[0] if exc.args and isinstance(exc.args[0], (int, float)) else 2.0
    # Within half the time limit, a second report cannot be a new execution's.
    window = max(float(limit) / 2, 1.0)
    with _external_lock:
        for stale in [k for k, t in _external_reports.items() if now - t > 3600]:
            del _external_reports[stale]
        seen = _external_reports.get(task_id)
        if seen is not None and now - seen < window:
            return False
        _external_reports[task_id] = now
        return True


def report_external_failure(
    task: ReliableTask,
    task_id: str | None,
    exc: BaseException,
    args: Any = None,
    kwargs: Any = None,
) -> None:
    """Send FAILED for an execution the worker's main process ended (hard time limit,
    lost worker): the body never got to decide, so nothing was sent for it yet."""
    if not _first_external_report(task_id, exc):
        return
    request = task.request
    known = not request.called_directly and request.id == task_id
    duration: float | None = None
    if exc.args and isinstance(exc.args[0], (int, float)):
        duration = float(exc.args[0])  # TimeLimitExceeded(limit): it ran that long
    if not known:
        # What the main process knows of the job, so that its dead letter can be
        # re-published (to the task's default queue: the delivery info was the child's).
        request = Context(id=task_id, task=task.name, args=args, kwargs=kwargs)
    queue = (request.delivery_info or {}).get("routing_key")
    task_outcome.send(
        sender=task,
        task_id=task_id,
        outcome=Outcome.FAILED,
        attempt=(request.retries or 0) + 1 if known else 0,
        exc=exc,
        reason=f"{describe_exc(exc)} (ended outside the task body)",
        duration=duration,
        retry_in=None,
        report=True,
        queue=queue,
        request=request,
    )
