"""Signals ReliableTask sends. Metrics, Sentry and logging subscribe to them.

Celery's ``Signal.send`` catches and logs what a receiver raises, so a broken
receiver never changes a task's outcome.

``execution_started``
    sender = the task; ``task_id``, ``attempt``, ``request`` (Celery's request
    context), ``queue``. Sent once per execution, before the task body runs.

``task_outcome``
    sender = the task; ``event``, an :class:`OutcomeEvent` (read its attributes:
    a misspelt one is an ``AttributeError``, not a silent ``None``). Sent exactly once
    per execution that ends. For receivers written before the event existed, its
    fields also come as keyword arguments of the same names: ``task_id``, ``outcome``,
    ``attempt``, ``exc``, ``reason``, ``duration``, ``retry_in``, ``report``,
    ``queue`` and ``request``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from celery.utils.dispatch import Signal

from celery_reliable.metrics import LIMITED
from celery_reliable.outcomes import Outcome
from celery_reliable.policy import LIMITS_LABEL

# use_caching: the receivers of each sender (a task) are worked out once, not on every
# send; connecting or disconnecting a receiver clears the cache.
execution_started = Signal(
    name="execution_started",
    use_caching=True,
    providing_args=["task_id", "attempt", "request", "queue"],
)

task_outcome = Signal(
    name="task_outcome",
    use_caching=True,
    providing_args=[
        "event",
        "task_id",
        "outcome",
        "attempt",
        "exc",
        "reason",
        "duration",
        "retry_in",
        "report",
        "queue",
        "request",
    ],
)


class OutcomeEvent(NamedTuple):
    """How one execution ended: built once, passed to every observer and receiver.

    Immutable (a named tuple: the cheapest immutable record to build, once per
    execution on the hot path; a frozen dataclass costs a ``__setattr__`` per field).
    """

    #: The task (the signal's sender).
    task: Any
    task_id: str | None
    outcome: Outcome
    #: 1 for the first execution; 0 when unknown (an execution killed by the hard
    #: time limit is reported by the worker's main process).
    attempt: int
    #: The exception that decided the outcome, or None.
    exc: BaseException | None
    #: A short human text.
    reason: str
    #: Seconds the execution took (None when the main process does not know).
    duration: float | None
    #: Seconds until the next run, for RETRIED and SNOOZED; else None.
    retry_in: float | None
    #: The matching rule asked for a Sentry report.
    report: bool
    #: The queue the message came from, or None.
    queue: str | None
    #: Celery's request context of the execution.
    request: Any
    #: What decided the outcome, as the task declared it: ``retry_on(ConnectionError)``,
    #: ``discard_on(ValueError)``, ``cancel_on(Order.DoesNotExist)``,
    #: ``autoretry_for(IOError)``, ``idempotency_key``, or
    #: ``reliable_unclassified="retry"`` (the app's setting); None when no declaration
    #: did (a success, an unclassified failure, ``Snooze``/``Cancel``/``Discard``,
    #: ``self.retry()``). Not among the signal's keyword arguments.
    rule: str | None = None

    @property
    def task_name(self) -> str:
        return str(self.task.name)

    @property
    def counted_as(self) -> str:
        """The counter this execution adds to (StatsD, the outcome history): its
        outcome's name, or ``limited`` for a SNOOZED one that waited for a limit's slot
        (``limits=[...]``), which is not a snooze."""
        if self.rule == LIMITS_LABEL and self.outcome is Outcome.SNOOZED:
            return LIMITED
        return self.outcome.value

    def send(self) -> None:
        """Send ``task_outcome`` with this event (and its fields as keywords)."""
        task_outcome.send(
            sender=self.task,
            event=self,
            task_id=self.task_id,
            outcome=self.outcome,
            attempt=self.attempt,
            exc=self.exc,
            reason=self.reason,
            duration=self.duration,
            retry_in=self.retry_in,
            report=self.report,
            queue=self.queue,
            request=self.request,
        )


__all__ = ["OutcomeEvent", "execution_started", "task_outcome"]
