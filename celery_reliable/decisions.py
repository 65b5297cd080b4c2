"""Deciding the one outcome of an execution: pure functions of what happened.

``Execution`` (``execution.py``) runs the body and acts on a :class:`Decision`; what
the decision is depends only on the exception or the requested outcome, the task's
declarations and the counters carried in the message headers. Pure module: no Celery
import, unit-tested in ``tests/unit/test_decisions.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery_reliable.backoff import compute_delay
from celery_reliable.errors import LeaseLost
from celery_reliable.headers import Counters
from celery_reliable.outcomes import Cancel, Discard, Outcome, OutcomeRequest, Snooze
from celery_reliable.policy import LIMITS_LABEL, CancelRule, DiscardRule, Policy, RetryRule, Rule

#: Seconds a job whose claim was taken over waits before it looks at the key again.
LEASE_LOST_SNOOZE = 1.0


@dataclass
class Decision:
    """The outcome of one execution, and what acting on it needs."""

    outcome: Outcome
    reason: str
    exc: BaseException | None = None
    #: Seconds until the job runs again (RETRIED, SNOOZED).
    retry_in: float | None = None
    #: Send an error report (Sentry) for it.
    report: bool = False
    #: The declaration that decided it, if one did.
    rule: Rule | None = None
    #: The counters the re-published message carries (RETRIED, SNOOZED).
    counters: Counters | None = None
    #: The label of what decided it (``OutcomeEvent.rule``): a rule's, or that of
    #: ``autoretry_for`` or ``idempotency_key``; None when no declaration did.
    label: str | None = None


def describe_exc(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decide_request(requested: OutcomeRequest, counters: Counters, max_snoozes: int) -> Decision:
    """The body raised or returned ``Snooze`` / ``Cancel`` / ``Discard``."""
    if isinstance(requested, Snooze):
        return snooze(requested.seconds, requested.reason, requested, counters, max_snoozes)
    if isinstance(requested, Cancel):
        return Decision(Outcome.CANCELLED, requested.reason or "cancelled", None)
    if isinstance(requested, Discard):
        return Decision(Outcome.DISCARDED, requested.reason or "discarded", requested)
    raise TypeError(f"unknown outcome request {requested!r}")  # pragma: no cover


def snooze(
    seconds: float,
    reason: str,
    exc: BaseException | None,
    counters: Counters,
    max_snoozes: int,
    *,
    label: str | None = None,
) -> Decision:
    """SNOOZED, unless the job already snoozed ``max_snoozes`` times: then DISCARDED."""
    if counters.snoozes >= max_snoozes:
        return Decision(
            Outcome.DISCARDED,
            f"snoozed {counters.snoozes} times, the limit (max_snoozes={max_snoozes}); "
            f"last: {reason}",
            exc,
            label=label,
        )
    return Decision(
        Outcome.SNOOZED,
        reason,
        exc,
        retry_in=seconds,
        counters=counters.with_snooze(),
        label=label,
    )


def limited(seconds: float, reason: str, counters: Counters, since_ms: int) -> Decision:
    """Over a limit: SNOOZED until about when a slot frees. No attempt spent, and not
    a snooze either (``max_snoozes`` does not count it): a job waits its turn."""
    return Decision(
        Outcome.SNOOZED,
        reason,
        None,
        retry_in=seconds,
        counters=counters.with_limited(since_ms),
        label=LIMITS_LABEL,
    )


def decide_exception(
    exc: Exception,
    *,
    policy: Policy,
    counters: Counters,
    attempt: int,
    max_snoozes: int,
    unclassified: RetryRule | None,
    celery_gave_up: str | None = None,
    celery_rule: str | None = None,
) -> Decision:
    """The body raised ``exc``.

    ``unclassified`` is the rule for exceptions no declaration matches (None: FAILED).
    ``celery_gave_up`` is set when Celery's own ``autoretry_for`` spent ``max_retries``
    on ``exc``: Celery's budget, kept under ReliableTask, ends the job EXHAUSTED;
    ``celery_rule`` is then the label of that ``autoretry_for``.
    """
    if isinstance(exc, LeaseLost):
        return snooze(LEASE_LOST_SNOOZE, describe_exc(exc), exc, counters, max_snoozes)
    rule = policy.classify(exc)
    if rule is None and celery_gave_up is not None:
        return Decision(
            Outcome.EXHAUSTED,
            f"{describe_exc(exc)} ({celery_gave_up})",
            exc,
            report=True,
            label=celery_rule,
        )
    if rule is None:
        rule = unclassified
        if rule is None:
            return Decision(Outcome.FAILED, f"{describe_exc(exc)} (unclassified)", exc, report=True)
    return apply_rule(rule, exc, counters, attempt)


def apply_rule(rule: Rule, exc: Exception, counters: Counters, attempt: int) -> Decision:
    """What ``rule`` makes of ``exc`` on execution number ``attempt``."""
    if isinstance(rule, CancelRule):
        return Decision(Outcome.CANCELLED, describe_exc(exc), exc, rule=rule, label=rule.label)
    if isinstance(rule, DiscardRule):
        return Decision(
            Outcome.DISCARDED,
            describe_exc(exc),
            exc,
            report=rule.report,
            rule=rule,
            label=rule.label,
        )
    after = counters.with_failure(rule.rule_id)
    used = after.attempts[rule.rule_id]
    if used >= rule.attempts:
        return Decision(
            Outcome.EXHAUSTED,
            f"{describe_exc(exc)} (attempts exhausted: {used}/{rule.attempts})",
            exc,
            report=True,
            rule=rule,
            label=rule.label,
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
        counters=after.with_retry_note(attempt, reason),
        label=rule.label,
    )
