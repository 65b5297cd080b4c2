"""Testing ReliableTasks: one execution at a time, through the real machinery.

``task_always_eager`` runs none of what a task deploys with (a retry is re-run at
once, a receipt is never asked for by a second run). :func:`perform_task` runs exactly
one execution as a worker would (classification, per-rule counters, receipts, signals,
observers) and tells what it decided, without a broker or a worker::

    from celery_reliable import Outcome
    from celery_reliable.testing import perform_task

    done = perform_task(send_order_confirmation, args=(42,))
    assert done.outcome is Outcome.RETRIED and done.retry_in > 0
    last = perform_task(send_order_confirmation, args=(42,), attempt=5)
    assert last.outcome is Outcome.EXHAUSTED

The pytest plugin (``celery_reliable.testing.plugin``, registered through the
``pytest11`` entry point) adds the ``reliable_db`` fixture: a fresh embedded store per
test.
"""

from __future__ import annotations

from dataclasses import dataclass
from socket import gethostname
from typing import Any

from celery import Celery
from celery.app.trace import build_tracer
from celery.utils import uuid

from celery_reliable.config import (
    forget_settings,
    refuse_a_changed_database_url,
    settings_for,
)
from celery_reliable.execution import pop_eager_outcome
from celery_reliable.headers import HEADER, Counters
from celery_reliable.outcomes import Outcome
from celery_reliable.policy import RetryRule
from celery_reliable.signals import OutcomeEvent
from celery_reliable.task import ReliableTask
from celery_reliable.testing.capture import capture_outcomes
from celery_reliable.testing.enqueued import (
    DrainLoop,
    Enqueued,
    all_enqueued,
    assert_enqueued,
    capture,
    drain,
    refute_enqueued,
)

__all__ = [
    "DrainLoop",
    "Enqueued",
    "OutcomeEvent",
    "Performed",
    "all_enqueued",
    "assert_enqueued",
    "capture",
    "capture_outcomes",
    "drain",
    "perform_task",
    "refute_enqueued",
    "reset",
]


@dataclass(frozen=True)
class Performed:
    """What one execution decided."""

    task_id: str
    outcome: Outcome
    #: The body's return value (SUCCEEDED), or the first run's result (DUPLICATE).
    result: Any
    #: The exception the execution ended with, if any.
    exc: BaseException | None
    reason: str
    #: Seconds until the next run (RETRIED, SNOOZED), else None.
    retry_in: float | None
    attempt: int
    #: The state a result backend would hold (``SUCCESS``, ``RETRY``, ``DISCARDED``, ...).
    state: str


def perform_task(
    task: Any,
    args: Any = (),
    kwargs: dict[str, Any] | None = None,
    *,
    attempt: int = 1,
    task_id: str | None = None,
    queue: str | None = None,
) -> Performed:
    """Run one execution of ``task`` and return its outcome; never raises what the task
    raised (it is in ``.exc``).

    ``attempt=N`` runs it as the N-th execution: Celery's ``retries`` is N - 1 and every
    retry rule of the task has failed N - 1 times already, so whichever rule classifies
    the exception decides as it would on that attempt ("what happens on the last
    attempt?"). A retry or snooze is decided and reported but not run: call again
    with the next ``attempt``, or drain the queue.
    """
    if not isinstance(task, ReliableTask):
        raise TypeError(f"perform_task() runs ReliableTasks; {task!r} is not one")
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an int >= 1 (1 is the first execution), got {attempt!r}")
    app = task.app
    settings = settings_for(app)  # a misspelt setting fails here, as at worker start
    refuse_a_changed_database_url(app)
    task_id = task_id or uuid()
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    rule_ids = [rule.rule_id for rule in task.reliable_rules() if isinstance(rule, RetryRule)]
    if settings.unclassified_rule is not None:
        rule_ids.append(settings.unclassified_rule.rule_id)
    counters = Counters(attempts=dict.fromkeys(rule_ids, attempt - 1))
    request = {
        "id": task_id,
        "task": task.name,
        "root_id": task_id,
        "parent_id": None,
        "retries": attempt - 1,
        "is_eager": True,
        "hostname": gethostname(),
        "callbacks": None,
        "errbacks": None,
        "headers": {HEADER: counters.as_header()},
        "ignore_result": task.ignore_result,
        "delivery_info": {
            "is_eager": True,
            "exchange": "",
            "routing_key": queue,
            "priority": None,
        },
    }
    with capture_outcomes() as seen:
        # The tracer Celery's own apply() builds, called once: apply() would go on to
        # run a retry at once, which is not what a worker does.
        tracer = build_tracer(task.name, task, eager=True, propagate=False, app=app)
        traced = tracer(task_id, args, kwargs, request)
    stored = pop_eager_outcome(task_id)
    heard = [event for event in seen if event.task_id == task_id]
    if not heard:
        raise RuntimeError(
            f"task {task.name}[{task_id}] sent no outcome: was its body replaced or its "
            "request pushed by hand?"
        )
    event = heard[-1]
    outcome = event.outcome
    state = outcome.state if stored is None else stored[0]
    retval = traced.retval
    return Performed(
        task_id=task_id,
        outcome=outcome,
        result=retval if outcome in (Outcome.SUCCEEDED, Outcome.DUPLICATE) else None,
        exc=event.exc,
        reason=event.reason or "",
        retry_in=event.retry_in,
        attempt=attempt,
        state=state,
    )


def reset(app: Celery) -> None:
    """Forget what celery_reliable read and built for ``app`` (settings, the store and
    its connections, the observers), so that changed ``reliable_*`` settings take effect.

    The ``reliable_db`` fixture calls it; a test that changes ``app.conf.reliable_*``
    after the app was used calls it too (the store refuses a changed URL otherwise).
    """
    from celery_reliable.store import forget_store
    from celery_reliable.wiring import forget_observers

    forget_observers(app)
    forget_store(app)
    forget_settings(app)
