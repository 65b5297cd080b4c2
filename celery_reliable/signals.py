"""Signals ReliableTask sends. Metrics, Sentry and logging subscribe to them.

Celery's ``Signal.send`` catches and logs what a receiver raises, so a broken
receiver never changes a task's outcome.

``execution_started``
    sender = the task; ``task_id``, ``attempt``, ``request`` (Celery's request
    context), ``queue``. Sent once per execution, before the task body runs.

``task_outcome``
    sender = the task; ``task_id``, ``outcome`` (:class:`~celery_reliable.Outcome`),
    ``attempt`` (1 for the first execution; 0 when unknown: an execution killed by
    the hard time limit is reported by the worker's main process), ``exc`` (the
    exception, or ``None``), ``reason`` (a short human text), ``duration``
    (seconds, float), ``retry_in`` (seconds until the next run for ``RETRIED`` and
    ``SNOOZED``, else ``None``), ``report`` (the matching rule asked for a Sentry
    report), ``queue`` (the queue the message came from, or ``None``) and
    ``request`` (Celery's request context). Sent exactly once per execution that
    ends.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

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

__all__ = ["execution_started", "task_outcome"]
