"""Cancels in a worker's main process: a cancelled job that has not started ends
``CANCELLED`` when it would start, without a store round trip per message.

* :class:`CancelWatch` (started by the bootstep) loads every cancel row into Celery's
  revoked set (``celery.worker.state.revoked``) before the worker consumes, reads the
  rows requested since the newest it saw every few seconds in a thread of its own
  (``worker/watch.py``: a store that is slow or down never holds up the event loop),
  and re-adds them all every :data:`READD_INTERVAL` seconds, since the set forgets an
  id after ``CELERY_WORKER_REVOKE_EXPIRES`` (3 hours).
* :func:`reliable_cancel`, a remote-control command of ours, which ``celery reliable
  cancel`` broadcasts after writing the row: a running worker knows at once, reason
  included; the rows are for the one that missed it (started later, disconnected,
  restarted). Not Celery's ``revoke``: since Celery 5.7 that command itself stores
  ``REVOKED`` for a job not running yet, which a caller waiting in ``get()`` would
  hear before the ``CANCELLED``.
* :class:`CancellableRequest` (``ReliableTask.Request``): Celery checks the revoked set
  when a message is received and when its countdown or ETA runs out; for an id with a
  cancel row, instead of Celery's ``REVOKED``, the job's state is ``CANCELLED`` (an
  ``AsyncResult.get()`` returns the outcome dict, as for any cancelled job), one
  ``CANCELLED`` outcome is sent (metrics, history, logs) and the message is acked.
  The reason comes from this process's copy of the rows; the store is read only when
  an id is revoked and not among them (a plain ``celery revoke`` then stays
  ``REVOKED``). Celery's own ``task-revoked`` event and ``task_revoked`` signal are sent
  as for any revoke: for Celery the message was revoked.

Only the main process needs this: a prefork child never sees a revoked message, and a
running job with a heartbeat reads its cancel in the beat's transaction
(``store/progress.py``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from time import monotonic
from typing import TYPE_CHECKING, Any, cast

from celery import signals
from celery.exceptions import ImproperlyConfigured
from celery.worker import state as worker_state
from celery.worker.control import control_command
from celery.worker.request import Request

from celery_reliable.compat.celery_internals import actual_ignore_result
from celery_reliable.decisions import Decision
from celery_reliable.errors import MissingDependency, StoreUnavailable
from celery_reliable.execution import outcome_meta
from celery_reliable.outcomes import CANCELLED_STATE, Outcome
from celery_reliable.signals import OutcomeEvent
from celery_reliable.store import store_for
from celery_reliable.store.cancels import Cancellation
from celery_reliable.store.timeutil import utcnow
from celery_reliable.wiring import ensure_observers
from celery_reliable.worker.watch import StoreReader

if TYPE_CHECKING:
    from celery_reliable.store import Store

logger = logging.getLogger("celery_reliable.cancel")

#: Seconds between two re-additions of every known cancel to the revoked set.
READD_INTERVAL = 600.0
#: Each read goes back this far before the newest cancel seen: a cancel written by a
#: machine whose clock is behind, or committed late, is still found.
CLOCK_MARGIN = timedelta(minutes=5)

#: The cancels this process knows, by task id (the worker's main process).
_known: dict[str, Cancellation] = {}


def cancel_for(app: Any, task_id: str) -> Cancellation | None:
    """The cancel of a revoked ``task_id``: this process's copy, else the store's row
    (read only here, on the revoked path). None: not cancelled, or the store cannot say
    (then the revoke stays Celery's ``REVOKED``)."""
    known = _known.get(task_id)
    if known is not None:
        return known
    try:
        store = store_for(app)
        found = store.cancels.get(task_id) if store is not None else None
    except (StoreUnavailable, ImproperlyConfigured, MissingDependency) as exc:
        logger.warning(
            "celery_reliable: revoked job %s: its cancel could not be read (%s): it ends "
            "REVOKED, as a plain revoke",
            task_id,
            exc,
        )
        return None
    if found is not None:
        _known[task_id] = found
    return found


def _learn(rows: list[Cancellation]) -> int:
    """Add ``rows`` to the known cancels and to Celery's revoked set: how many were new."""
    added = 0
    for row in rows:
        if _known.get(row.task_id) != row:
            added += 1
            _known[row.task_id] = row
            worker_state.revoked.add(row.task_id)
    return added


@control_command(
    args=[("task_id", str), ("reason", str), ("requested_by", str), ("requested_at", str)],
    signature="<task_id> [reason [requested_by [requested_at]]]",
)
def reliable_cancel(
    state: Any,
    task_id: str,
    reason: str | None = None,
    requested_by: str | None = None,
    requested_at: str | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Job ``task_id`` was cancelled (``celery reliable cancel``): it does not start."""
    try:
        when = datetime.fromisoformat(requested_at) if requested_at else utcnow()
    except ValueError:
        when = utcnow()
    _learn([Cancellation(task_id, reason or None, requested_by or None, when)])
    logger.info("celery_reliable: job %s cancelled", task_id)
    return {"ok": f"job {task_id} cancelled"}  # Celery's reply shape (control.ok)


class CancelWatch:
    """Keeps Celery's revoked set holding every job cancelled in the store."""

    def __init__(self, store: Store, keep_seconds: float) -> None:
        self.store = store
        #: Cancels older than this are pruned from the store: forgotten here too.
        self.keep_seconds = keep_seconds
        self._newest: datetime | None = None
        self._readded = monotonic()
        self._reader = StoreReader("cancels", self.read, self.apply, logger=logger)

    def start(self, timer: Any) -> None:
        """Load every cancel now (before the worker consumes), then keep reading."""
        try:
            rows = self.store.cancels.since(None)
        except StoreUnavailable as exc:
            self._reader.failed_at_start()
            logger.error(
                "celery_reliable: cancels not loaded at start-up (%s): read once the store is back",
                exc,
            )
        else:
            self._seen(rows)
            learnt = _learn(rows)
            if learnt:
                logger.info("celery_reliable: %d cancelled jobs loaded", learnt)
        self._reader.start(timer)

    def stop(self) -> None:
        self._reader.stop()

    def _seen(self, rows: list[Cancellation]) -> None:
        if rows:
            newest = max(row.requested_at for row in rows)
            if self._newest is None or newest > self._newest:
                self._newest = newest

    def read(self) -> list[Cancellation]:
        """In the reading thread: the rows requested since the newest seen (margin
        included)."""
        since = None if self._newest is None else self._newest - CLOCK_MARGIN
        rows = self.store.cancels.since(since)
        self._seen(rows)
        return rows

    def apply(self, found: list[list[Cancellation]]) -> None:
        """In the worker's timer: what the thread read goes into the revoked set; every
        :data:`READD_INTERVAL`, every known cancel again (and the pruned ones out)."""
        for rows in found:
            _learn(rows)
        if monotonic() - self._readded >= READD_INTERVAL:
            self._readded = monotonic()
            cutoff = utcnow() - timedelta(seconds=self.keep_seconds)
            for task_id, row in list(_known.items()):
                if row.requested_at < cutoff:
                    del _known[task_id]
                else:
                    worker_state.revoked.add(task_id)


class CancellableRequest(Request):
    """``ReliableTask.Request``: Celery's request, but a revoked job with a cancel row
    ends ``CANCELLED`` (see the module's docstring).

    Celery calls ``revoked()`` for every message it executes and, first, for a revoked
    id at receipt; the override costs one set lookup on the way to Celery's own. The
    attributes read here (``_already_revoked``, ``_context``, ``_app``) are Celery's
    from 4.x to 5.7 (``make compat`` runs this on 5.4 to 5.7).
    """

    def revoked(self) -> bool:
        me = cast(Any, self)
        if not me._already_revoked and self.id in worker_state.revoked:
            cancel = cancel_for(me._app, self.id)
            if cancel is not None:
                self._end_cancelled(cancel)
                return True
        return bool(super().revoked())

    def _end_cancelled(self, cancel: Cancellation) -> None:
        """As Celery's ``_announce_revoked``, but the state is CANCELLED and the outcome
        told: the message is not executed."""
        me = cast(Any, self)
        task = me.task
        context = me._context
        reason = cancel.describe()
        logger.info("Discarding cancelled task: %s[%s] (%s)", task.name, self.id, reason)
        worker_state.task_ready(self)
        me.send_event("task-revoked", terminated=False, signum=None, expired=False)
        attempt = (getattr(context, "retries", 0) or 0) + 1
        decision = Decision(Outcome.CANCELLED, reason)
        queue_name = (self.delivery_info or {}).get("routing_key")
        # Told first, then stored, as an execution that ends CANCELLED does.
        ensure_observers(task.app)
        OutcomeEvent(
            task=task,
            task_id=self.id,
            outcome=Outcome.CANCELLED,
            attempt=attempt,
            exc=None,
            reason=reason,
            duration=None,
            retry_in=None,
            report=False,
            queue=queue_name,
            request=context,
        ).send()
        try:
            # mark_as_done takes any state, and counts a chord's part as ended.
            task.backend.mark_as_done(
                self.id,
                outcome_meta(decision, attempt),
                request=context,
                store_result=not actual_ignore_result(task, context),
                state=CANCELLED_STATE,
            )
        except Exception:
            logger.exception(
                "task %s[%s]: could not store state %s in the result backend",
                task.name,
                self.id,
                CANCELLED_STATE,
            )
        self._release_unique(task)
        self.acknowledge()
        me._already_revoked = True
        signals.task_revoked.send(
            sender=task, request=context, terminated=False, signum=None, expired=False
        )

    def _release_unique(self, task: Any) -> None:
        spec = getattr(task, "_reliable_unique", None)
        if spec is None or spec.release != "terminal":
            return
        from celery_reliable import unique

        unique.release(task, self.id, self.args, self.kwargs)
