"""Executions Celery's worker ends: the hard time limit, a lost pool child.

The body never got to decide these, so no outcome was sent for them yet. Celery's
``task_failure`` signal tells the main process, and ``worker/receivers.py`` hands it
here to send the one ``FAILED`` outcome (which observers turn into a dead letter, a
metric and an error report). A body stuck without heartbeats, which the heartbeat
monitor kills, is decided by its rules in ``worker/stuck.py``.
"""

from __future__ import annotations

import sys
import threading
from time import monotonic
from typing import TYPE_CHECKING, Any

from celery.app.task import Context

from celery_reliable.decisions import describe_exc
from celery_reliable.outcomes import Outcome
from celery_reliable.signals import OutcomeEvent

if TYPE_CHECKING:
    from celery_reliable.task import ReliableTask


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
        # re-published (to the task's default queue: the delivery info was the child's),
        # with its message's custom headers (a batch member's end is counted by them).
        request = Context(
            id=task_id,
            task=task.name,
            args=args,
            kwargs=kwargs,
            headers=_headers_of_timed_out(task_id),
        )
    queue = (request.delivery_info or {}).get("routing_key")
    reason = f"{describe_exc(exc)} (ended outside the task body)"
    OutcomeEvent(
        task=task,
        task_id=task_id,
        outcome=Outcome.FAILED,
        attempt=(request.retries or 0) + 1 if known else 0,
        exc=exc,
        reason=reason,
        duration=duration,
        retry_in=None,
        report=True,
        queue=queue,
        request=request,
    ).send()


def _headers_of_timed_out(task_id: str | None) -> dict[str, Any] | None:
    """The custom headers of the message whose hard time limit ran out. Celery's
    ``Request.on_timeout`` sends ``task_failure`` without putting its request on the
    task's stack (it does for a lost child): the request is the ``self`` of a frame
    that called this receiver, a few frames up (Celery's signal dispatch between)."""
    from celery.worker.request import Request

    frame = sys._getframe(1)
    for _ in range(12):
        found = frame.f_locals.get("self")
        if isinstance(found, Request) and found.id == task_id:
            headers = getattr(getattr(found, "_context", None), "headers", None)
            return dict(headers) if isinstance(headers, dict) else None
        if frame.f_back is None:
            return None
        frame = frame.f_back
    return None
