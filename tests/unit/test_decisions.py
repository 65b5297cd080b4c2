"""Deciding an execution's one outcome: ``celery_reliable.decisions``, pure functions."""

from __future__ import annotations

from typing import Any

import pytest

from celery_reliable import Cancel, Discard, Outcome, Snooze
from celery_reliable.backoff import fixed
from celery_reliable.decisions import decide_exception, decide_request, snooze
from celery_reliable.errors import LeaseLost
from celery_reliable.headers import Counters
from celery_reliable.policy import CancelRule, DiscardRule, Policy, make_retry_rule


class Timeout(Exception):
    pass


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__("slow down")
        self.retry_after = retry_after


class Invalid(Exception):
    pass


class Gone(Exception):
    pass


class Bug(Exception):
    pass


TIMEOUT_RULE = make_retry_rule([Timeout], wait=fixed(2), attempts=3, jitter=False)
RATE_RULE = make_retry_rule([RateLimited], wait=fixed(1), attempts=2)
POLICY = Policy.compose(
    None,
    [
        TIMEOUT_RULE,
        RATE_RULE,
        DiscardRule(exc_types=(Invalid,), report=True),
        CancelRule(exc_types=(Gone,)),
    ],
)


def decide(exc: Exception, counters: Counters | None = None, **options: Any) -> Any:
    options.setdefault("policy", POLICY)
    options.setdefault("attempt", 1)
    options.setdefault("max_snoozes", 3)
    options.setdefault("unclassified", None)
    return decide_exception(exc, counters=counters or Counters(), **options)


def test_a_transient_error_is_retried_with_its_rule_counter_in_the_headers() -> None:
    decision = decide(Timeout("no answer"))
    assert decision.outcome is Outcome.RETRIED
    assert decision.rule is TIMEOUT_RULE
    assert decision.reason == "Timeout: no answer (attempt 1/3)"
    assert decision.retry_in == 2
    assert decision.counters.attempts == {TIMEOUT_RULE.rule_id: 1}
    assert decision.counters.history[0][0] == 1  # attempt 1 noted for error reports
    assert decision.report is False


def test_the_last_attempt_is_exhausted_and_reported() -> None:
    counters = Counters(attempts={TIMEOUT_RULE.rule_id: 2})
    decision = decide(Timeout(), counters, attempt=3)
    assert decision.outcome is Outcome.EXHAUSTED
    assert decision.reason == "Timeout (attempts exhausted: 3/3)"
    assert decision.report is True
    assert decision.retry_in is None


def test_each_rule_spends_only_its_own_counter() -> None:
    counters = Counters(attempts={TIMEOUT_RULE.rule_id: 2})
    decision = decide(RateLimited(retry_after=0.5), counters, attempt=3)
    assert decision.outcome is Outcome.RETRIED
    assert decision.counters.attempts == {TIMEOUT_RULE.rule_id: 2, RATE_RULE.rule_id: 1}


def test_retry_after_is_a_floor_on_the_wait() -> None:
    decision = decide(RateLimited(retry_after=30))
    assert decision.retry_in >= 30


def test_discard_and_cancel_rules() -> None:
    discarded = decide(Invalid("bob@"))
    assert (discarded.outcome, discarded.reason, discarded.report) == (
        Outcome.DISCARDED,
        "Invalid: bob@",
        True,
    )
    cancelled = decide(Gone())
    assert (cancelled.outcome, cancelled.report) == (Outcome.CANCELLED, False)


def test_unclassified_fails_by_default_and_follows_the_unclassified_rule() -> None:
    failed = decide(Bug("oops"))
    assert (failed.outcome, failed.reason, failed.report) == (
        Outcome.FAILED,
        "Bug: oops (unclassified)",
        True,
    )
    fallback = make_retry_rule([Exception], attempts=2)
    assert decide(Bug(), unclassified=fallback).outcome is Outcome.RETRIED


def test_celery_autoretry_budget_spent_is_exhausted() -> None:
    decision = decide(Bug("x"), celery_gave_up="autoretry_for: max_retries=2 exhausted")
    assert decision.outcome is Outcome.EXHAUSTED
    assert decision.reason == "Bug: x (autoretry_for: max_retries=2 exhausted)"
    # a declaration still wins over Celery's budget
    assert decide(Gone(), celery_gave_up="spent").outcome is Outcome.CANCELLED


def test_a_lost_lease_snoozes_until_the_snooze_limit() -> None:
    assert decide(LeaseLost("taken over")).outcome is Outcome.SNOOZED
    assert decide(LeaseLost("taken over"), Counters(snoozes=3)).outcome is Outcome.DISCARDED


@pytest.mark.parametrize(
    ("requested", "outcome", "reason"),
    [
        (Cancel(), Outcome.CANCELLED, "cancelled"),
        (Cancel("refunded"), Outcome.CANCELLED, "refunded"),
        (Discard(), Outcome.DISCARDED, "discarded"),
        (Discard("bad"), Outcome.DISCARDED, "bad"),
        (Snooze(5, "busy"), Outcome.SNOOZED, "busy"),
    ],
)
def test_requested_outcomes(requested: Any, outcome: Outcome, reason: str) -> None:
    decision = decide_request(requested, Counters(), max_snoozes=3)
    assert (decision.outcome, decision.reason) == (outcome, reason)


def test_a_snooze_does_not_spend_attempts_and_is_bounded() -> None:
    counters = Counters(attempts={TIMEOUT_RULE.rule_id: 1}, snoozes=1)
    decision = snooze(5.0, "busy", None, counters, max_snoozes=3)
    assert decision.outcome is Outcome.SNOOZED
    assert decision.retry_in == 5.0
    assert decision.counters.snoozes == 2
    assert decision.counters.attempts == {TIMEOUT_RULE.rule_id: 1}
    limit = snooze(5.0, "busy", None, Counters(snoozes=3), max_snoozes=3)
    assert limit.outcome is Outcome.DISCARDED
    assert limit.reason == "snoozed 3 times, the limit (max_snoozes=3); last: busy"
