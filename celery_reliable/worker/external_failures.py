"""Executions the worker's main process ends: the hard time limit, a lost pool child,
a body stuck without heartbeats that the heartbeat monitor killed.

The body never got to decide these, so no outcome was sent for them yet. For the hard
time limit and a lost child, Celery's ``task_failure`` signal tells the main process,
and ``worker/receivers.py`` hands it here to send the one ``FAILED`` outcome (which
observers turn into a dead letter, a metric and an error report). A stuck body the
monitor killed (``longrun/monitor.py``) comes through ``task_revoked``: its outcome is
what the task's rules say of ``HeartbeatTimeout``, decided and acted on here as the
body would have (a retry re-published, a dead letter written, Celery's FAILURE stored).
"""

from __future__ import annotations

import sys
import threading
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

from celery.app.task import Context
from celery.exceptions import Ignore, Reject, Retry

from celery_reliable.compat.celery_internals import actual_ignore_result
from celery_reliable.decisions import Decision, describe_exc
from celery_reliable.errors import HeartbeatTimeout
from celery_reliable.execution import Execution
from celery_reliable.longrun.monitor import killed
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


class _KilledExecution(Execution):
    """An execution whose pool process the monitor killed, decided in the main process.

    Celery's termination acked the message already, so a re-publish that fails cannot
    give it back (it ends FAILED, said so); and no tracer stores RETRY after us."""

    __slots__ = ()

    def message_still_ours(self) -> bool:
        return False

    def _store_retry_first(self, decision: Decision) -> bool:
        task, request = self.task, self.request
        if actual_ignore_result(task, request) and not task.store_errors_even_if_ignored:
            return False
        task.backend.mark_as_retry(
            cast(str, request.id), cast(Exception, decision.exc), request=request
        )
        return False


def decide_killed_execution(task: ReliableTask, request: Context) -> None:
    """``task_revoked(terminated=True)`` of an execution the heartbeat monitor killed:
    its outcome is the task's rules' answer to ``HeartbeatTimeout`` (a stuck body that
    is retried, discarded or dead-lettered like one that raised it)."""
    task_id = request.id
    why, ran = killed.pop(task_id, (None, None)) if task_id is not None else (None, None)
    if why is None:
        return  # a revoke of someone else's (a user's, a cancel): not ours to decide
    execution = _KilledExecution(
        task, request, tuple(request.args or ()), dict(request.kwargs or {})
    )
    execution.started = monotonic() - (ran or 0.0)
    exc = HeartbeatTimeout(why)
    decision = execution.decide_exception(exc)
    try:
        execution.act(decision)
    except (Retry, Ignore, Reject):
        return  # re-published, or its own state stored: done
    except Exception as raised:  # EXHAUSTED / FAILED: what Celery's tracer would store
        task.backend.mark_as_failure(
            cast(str, task_id),
            raised,
            request=request,
            store_result=not actual_ignore_result(task, request),
        )
