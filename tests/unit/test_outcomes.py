"""The Outcome enum (DESIGN.md's table) and the explicit outcomes Cancel / Discard / Snooze."""

from __future__ import annotations

import copy
import pickle

import pytest

from celery_reliable import Cancel, Discard, Outcome, Snooze

# (outcome, value, Celery state, writes a dead letter) -- DESIGN.md, "Outcomes".
TABLE = [
    (Outcome.SUCCEEDED, "succeeded", "SUCCESS", False),
    (Outcome.DUPLICATE, "duplicate", "SUCCESS", False),
    (Outcome.RETRIED, "retried", "RETRY", False),
    (Outcome.SNOOZED, "snoozed", "SNOOZED", False),
    (Outcome.CANCELLED, "cancelled", "CANCELLED", False),
    (Outcome.DISCARDED, "discarded", "DISCARDED", True),
    (Outcome.EXHAUSTED, "exhausted", "FAILURE", True),
    (Outcome.FAILED, "failed", "FAILURE", True),
]


def test_exactly_the_outcomes_of_the_table() -> None:
    assert [outcome for outcome, *_ in TABLE] == list(Outcome)


@pytest.mark.parametrize(("outcome", "value", "state", "dead_letter"), TABLE)
def test_outcome_value_state_and_dead_letter(
    outcome: Outcome, value: str, state: str, dead_letter: bool
) -> None:
    assert outcome.value == value
    assert str(outcome) == value
    assert outcome == value  # a str enum: usable directly in metric names
    assert Outcome(value) is outcome
    assert outcome.state == state
    assert outcome.dead_letters is dead_letter


@pytest.mark.parametrize(
    ("outcome", "is_error"),
    [
        (Outcome.SUCCEEDED, False),
        (Outcome.DUPLICATE, False),
        (Outcome.RETRIED, False),
        (Outcome.SNOOZED, False),
        (Outcome.CANCELLED, False),
        (Outcome.DISCARDED, True),
        (Outcome.EXHAUSTED, True),
        (Outcome.FAILED, True),
    ],
)
def test_cancelled_is_not_an_error(outcome: Outcome, is_error: bool) -> None:
    assert outcome.is_error is is_error


@pytest.mark.parametrize(
    ("request_", "outcome"),
    [
        (Cancel("r"), Outcome.CANCELLED),
        (Discard("r"), Outcome.DISCARDED),
        (Snooze(5), Outcome.SNOOZED),
    ],
    ids=["Cancel", "Discard", "Snooze"],
)
def test_explicit_outcomes_name_their_outcome_and_can_be_raised(
    request_: Exception, outcome: Outcome
) -> None:
    assert request_.outcome is outcome  # type: ignore[attr-defined]
    assert isinstance(request_, Exception)
    with pytest.raises(type(request_)):
        raise request_


def test_reasons() -> None:
    assert Cancel("order was deleted").reason == "order was deleted"
    assert str(Cancel("order was deleted")) == "order was deleted"
    assert Discard("bad payload").reason == "bad payload"
    assert Cancel().reason == ""
    assert Snooze(5, "waiting on the bank").reason == "waiting on the bank"
    assert "5" in Snooze(5).reason


@pytest.mark.parametrize("seconds", [5, 0.5, 2.25, 86400])
def test_snooze_keeps_seconds_as_float(seconds: float) -> None:
    snooze = Snooze(seconds)
    assert snooze.seconds == seconds
    assert isinstance(snooze.seconds, float)


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (0, ValueError),
        (0.0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (float("-inf"), ValueError),
        ("5", TypeError),
        (None, TypeError),
        (True, TypeError),
    ],
)
def test_bad_snooze_seconds_raise(seconds: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        Snooze(seconds)  # type: ignore[arg-type]


def _round_trips(value: Exception) -> list[Exception]:
    return [
        *(
            pickle.loads(pickle.dumps(value, protocol))
            for protocol in range(pickle.HIGHEST_PROTOCOL + 1)
        ),
        copy.copy(value),
        copy.deepcopy(value),
    ]


@pytest.mark.parametrize("kind", [Cancel, Discard])
@pytest.mark.parametrize("reason", ["", "order 42 was deleted", "ünïcode ✓"])
def test_cancel_and_discard_survive_pickle(kind: type[Exception], reason: str) -> None:
    original = kind(reason)
    for copied in _round_trips(original):
        assert type(copied) is kind
        assert copied.reason == reason  # type: ignore[attr-defined]
        assert str(copied) == str(original)
        assert copied.outcome is original.outcome  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("seconds", "reason"), [(5, ""), (2.5, "waiting on the bank"), (3600, "rate limited")]
)
def test_snooze_survives_pickle(seconds: float, reason: str) -> None:
    original = Snooze(seconds, reason)
    for copied in _round_trips(original):
        assert type(copied) is Snooze
        assert copied.seconds == seconds
        assert copied.reason == original.reason
        assert str(copied) == str(original)


def test_subclass_of_an_outcome_survives_pickle() -> None:
    copied = pickle.loads(pickle.dumps(OrderGone("order 7")))
    assert type(copied) is OrderGone
    assert copied.reason == "order 7"
    assert copied.outcome is Outcome.CANCELLED


class OrderGone(Cancel):
    pass
