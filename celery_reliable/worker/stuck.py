"""A body stuck without heartbeats, killed: the heartbeat monitor's kill
(``longrun/monitor.py``) of a prefork pool process, and the outcome the worker's main
process decides for that execution.

The kill runs on the worker's event loop, where Celery settles messages (a channel is
not shared across threads). It is ``Request.terminate`` (what ``revoke(terminate=True)``
runs) without the revoke: billiard is told the process is ended on purpose (so the pool
replaces it at once, without waiting for ``worker_lost_wait``), but nothing stores
``REVOKED``. Celery's ``terminate`` stored it, acked, then sent ``task_revoked`` where
the outcome was decided: for a few milliseconds the job read ``REVOKED``, a state it
never ends in. Here the outcome is decided first, from ``HeartbeatTimeout`` by the
task's rules, as the body would have (a retry re-published, a dead letter written,
Celery's ``FAILURE`` stored), and the message is settled after: acked, or given back to
the broker when a retry could not be re-published and the message is still ours
(``acks_late``). The request is marked revoked for Celery, so that the pool's report of
the terminated job announces nothing.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from celery.app.task import Context
from celery.exceptions import Ignore, Reject, Retry
from celery.utils.saferepr import saferepr

from celery_reliable.compat.celery_internals import actual_ignore_result
from celery_reliable.decisions import Decision
from celery_reliable.errors import HeartbeatTimeout
from celery_reliable.execution import Execution

if TYPE_CHECKING:
    from celery_reliable.task import ReliableTask

logger = logging.getLogger("celery_reliable.heartbeat")


def kill_on_loop(worker: object) -> Callable[[str, int, str], None]:
    """The monitor's ``kill``: :func:`kill_stuck` on the worker's event loop."""

    def on_loop(task_id: str, pid: int, reason: str) -> None:
        hub = getattr(worker, "hub", None)
        if hub is None:  # no event loop (a worker without one): from this thread
            kill_stuck(worker, task_id, pid, reason)
        else:
            hub.call_soon(kill_stuck, worker, task_id, pid, reason)

    return on_loop


def kill_stuck(worker: object, task_id: str, pid: int, reason: str) -> None:
    """Kill pool process ``pid``, stuck in ``task_id``'s body, and end the execution."""
    from celery.worker import state

    request = next(
        (r for r in tuple(state.active_requests) if r.id == task_id and r.worker_pid == pid),
        None,
    )
    if request is None:
        return  # not running any more: it ended between the monitor's last look and now
    me = cast(Any, request)
    # Celery's time_start is the wall clock's (billiard's time of acceptance).
    started = me.time_start
    ran = time.time() - started if started else None
    # What Request.terminate does, but _announce_revoked. Marked first: when the pool
    # reports the terminated job, Request.on_failure leaves a revoked request alone.
    me._already_revoked = True
    cast(Any, worker).pool.terminate_job(pid, signal.SIGKILL)
    applied = me._apply_result() if me._apply_result is not None else None  # a weakref
    if applied is not None:
        applied.terminate(signal.SIGKILL)
    state.task_ready(request)
    requeue = False
    try:
        ended = decide_killed_execution(
            request.task, me._context, reason, ran, still_ours=not request.acknowledged
        )
        requeue = isinstance(ended, Reject) and bool(getattr(ended, "requeue", False))
        _send_event(request, ended)
    except Exception:  # its outcome was sent; the result backend may not have its state
        logger.exception("task %s[%s]: ending the killed execution failed", me.name, task_id)
    finally:
        # After the outcome: a worker lost before this leaves the message to the broker.
        if requeue:
            request.reject(requeue=True)
        else:
            request.acknowledge()


def _send_event(request: Any, ended: BaseException) -> None:
    """The monitoring event Celery sends for a body that ended so (none for Ignore;
    ``reject`` sends ``task-rejected``)."""
    if isinstance(ended, Retry):
        request.send_event("task-retried", exception=saferepr(ended.exc), traceback="")
    elif not isinstance(ended, (Ignore, Reject)):
        request.send_event("task-failed", exception=saferepr(ended), traceback="")


class _KilledExecution(Execution):
    """An execution whose pool process the monitor killed, decided in the main process.

    The message is still ours only with ``acks_late`` (settled after the decision); no
    tracer stores RETRY after us."""

    __slots__ = ("still_ours",)

    def __init__(
        self,
        task: ReliableTask,
        request: Context,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        still_ours: bool,
    ) -> None:
        super().__init__(task, request, args, kwargs)
        self.still_ours = still_ours

    def message_still_ours(self) -> bool:
        return self.still_ours

    def _store_retry_first(self, decision: Decision) -> bool:
        task, request = self.task, self.request
        if actual_ignore_result(task, request) and not task.store_errors_even_if_ignored:
            return False
        task.backend.mark_as_retry(
            cast(str, request.id), cast(Exception, decision.exc), request=request
        )
        return False


def decide_killed_execution(
    task: ReliableTask,
    request: Context,
    why: str,
    ran: float | None,
    still_ours: bool,
) -> BaseException:
    """The outcome of an execution the heartbeat monitor killed (``why``, after ``ran``
    seconds): the task's rules' answer to ``HeartbeatTimeout`` (a stuck body is retried,
    discarded or dead-lettered like one that raised it), acted on. Returns how it ended,
    as the body would have raised it: ``Retry`` (re-published), ``Ignore`` (its own state
    stored), ``Reject(requeue=True)`` (a re-publish failed and ``still_ours``: the
    message goes back to the broker), else the failure, stored as Celery's FAILURE."""
    execution = _KilledExecution(
        task, request, tuple(request.args or ()), dict(request.kwargs or {}), still_ours
    )
    execution.started = time.monotonic() - (ran or 0.0)
    decision = execution.decide_exception(HeartbeatTimeout(why))
    try:
        execution.act(decision)
    except (Retry, Ignore, Reject) as ended:
        return ended  # re-published, its own state stored, or given back: done
    except Exception as raised:  # EXHAUSTED / FAILED: what Celery's tracer would store
        task.backend.mark_as_failure(
            cast(str, request.id),
            raised,
            request=request,
            store_result=not actual_ignore_result(task, request),
        )
        return raised
