"""The outcome taxonomy and the explicit outcomes a task can raise or return.

Pure module: nothing of Celery is imported here, so the policy and the tests of it
stay fast and free of a broker.
"""

from __future__ import annotations

import enum
import math


class Outcome(str, enum.Enum):
    """How one execution of a task ended. Exactly one per execution.

    The value is the lowercase name used in metric names (``celery.{task}.retried``).
    """

    SUCCEEDED = "succeeded"
    DUPLICATE = "duplicate"
    RETRIED = "retried"
    SNOOZED = "snoozed"
    CANCELLED = "cancelled"
    DISCARDED = "discarded"
    EXHAUSTED = "exhausted"
    FAILED = "failed"

    @property
    def state(self) -> str:
        """The Celery result-backend state stored for this outcome."""
        return _STATES[self]

    @property
    def is_error(self) -> bool:
        """True for the outcomes that end a job because something went wrong."""
        return self in _ERRORS

    @property
    def dead_letters(self) -> bool:
        """True for the outcomes that write a dead letter."""
        return self in _ERRORS

    def __str__(self) -> str:
        return self.value


#: Celery states of our own. ``celery_reliable.results`` makes CANCELLED and DISCARDED
#: ready states to Celery (SNOOZED is not: the job runs again).
SNOOZED_STATE = "SNOOZED"
CANCELLED_STATE = "CANCELLED"
DISCARDED_STATE = "DISCARDED"

_STATES = {
    Outcome.SUCCEEDED: "SUCCESS",
    Outcome.DUPLICATE: "SUCCESS",
    Outcome.RETRIED: "RETRY",
    Outcome.SNOOZED: SNOOZED_STATE,
    Outcome.CANCELLED: CANCELLED_STATE,
    Outcome.DISCARDED: DISCARDED_STATE,
    Outcome.EXHAUSTED: "FAILURE",
    Outcome.FAILED: "FAILURE",
}
_ERRORS = frozenset({Outcome.DISCARDED, Outcome.EXHAUSTED, Outcome.FAILED})


class OutcomeRequest(Exception):
    """Base of the outcomes a task asks for explicitly, by raising or returning them.

    They derive from ``Exception`` (as Celery's own ``Ignore`` and ``Reject`` do) so
    that raising one from deep inside a call stack works the way users expect.
    """

    outcome: Outcome

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = str(reason)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason,))


class Cancel(OutcomeRequest):
    """Stop this job: an expected condition it cannot fix, not an error.

    ``raise Cancel("order was deleted")`` or ``return Cancel(...)``. The job is acked,
    the state is ``CANCELLED``, nothing is reported.
    """

    outcome = Outcome.CANCELLED


class Discard(OutcomeRequest):
    """Drop this job as a permanent failure: retrying will not help.

    The job is acked, the state is ``DISCARDED``, a dead letter is written.
    """

    outcome = Outcome.DISCARDED


class Snooze(OutcomeRequest):
    """Run this job again in ``seconds`` without spending an attempt.

    Bounded by the task option ``max_snoozes``; past it the job is ``DISCARDED``.
    """

    outcome = Outcome.SNOOZED

    def __init__(self, seconds: float, reason: str = "") -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise TypeError(f"Snooze(seconds) takes a number of seconds, got {seconds!r}")
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"Snooze(seconds) must be a finite number > 0, got {seconds!r}")
        super().__init__(reason or f"snoozed for {seconds:g}s")
        self.seconds = float(seconds)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.seconds, self.reason))
