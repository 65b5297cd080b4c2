"""Cancelling a job that holds: what ``celery -A proj reliable cancel`` and the web
view's Cancel button do, from Python.

:func:`cancel_job` writes the job's row in the store (``reliable_cancels``), then
broadcasts it to the running workers (the remote-control command ``reliable_cancel``,
which puts the id in Celery's revoked set, as ``revoke`` without terminate does); a
worker that missed it (stopped, disconnected, started later) reads the row from the
store within seconds (``worker/cancels.py``). Then:

* a job that has not started ends ``CANCELLED`` when a worker would start it: its
  message is received, or its countdown (a retry's, a snooze's) runs out. It never runs;
* a running job with a heartbeat ends ``CANCELLED`` at its next beat: ``heartbeat()``
  raises ``Cancel`` in its body;
* a running job without one runs to its end (nothing interrupts it); a retry of it
  would end ``CANCELLED``.
"""

from __future__ import annotations

import getpass
import socket
from dataclasses import dataclass
from typing import Any

from celery_reliable.longrun.progress import Progress, stale_after
from celery_reliable.results import TERMINAL_STATES
from celery_reliable.store import require_store
from celery_reliable.store.cancels import Cancellation
from celery_reliable.store.timeutil import utcnow

__all__ = ["Cancellation", "Cancelled", "cancel_job", "cancel_of", "requester", "where_is"]

#: Seconds the workers have to answer "where is this job?".
INSPECT_TIMEOUT = 1.0

#: Where a job stands when it is cancelled (``Cancelled.stage``).
NOT_STARTED = "not started"
BETWEEN_ATTEMPTS = "between attempts"
BEATING = "running with a heartbeat"
RUNNING = "running without a heartbeat"
ENDED = "ended"


@dataclass(frozen=True)
class Cancelled:
    """What :func:`cancel_job` did, and what becomes of the job."""

    cancellation: Cancellation
    #: False: the job was cancelled before, and that first cancel stands.
    new: bool
    #: Where the job stood: one of ``not started``, ``between attempts``, ``running with
    #: a heartbeat``, ``running without a heartbeat``, ``ended``.
    stage: str
    #: What happens to it now, in a phrase.
    fate: str
    #: Why running workers could not be told at once (the broker's error; they read the
    #: store within a few seconds), or None.
    broadcast_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.cancellation.to_dict(),
            "new": self.new,
            "stage": self.stage,
            "fate": self.fate,
            "broadcast_error": self.broadcast_error,
        }


def requester() -> str:
    """``user@host`` of this process: who a cancel from the CLI or Python came from."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        user = "?"
    return f"{user}@{socket.gethostname()}"


def cancel_of(app: Any, task_id: str) -> Cancellation | None:
    """Job ``task_id``'s cancel, if it was cancelled (and not pruned yet)."""
    return require_store(app, "reading a cancel").cancels.get(task_id)


def cancel_job(
    app: Any, task_id: str, reason: str | None = None, requested_by: str | None = None
) -> Cancelled:
    """Cancel job ``task_id`` (persistent: see the module's docstring).

    Raises ``StoreUnavailable`` when the store cannot be reached and
    ``ImproperlyConfigured`` when the app has none: nothing is cancelled then.
    A broker that cannot be reached is not an error: the workers read the store.
    """
    store = require_store(app, "cancelling a job")
    # Where it stands is read before: a beat may end it as soon as the row is written.
    beat = store.progress.get(task_id)
    state = _result_state(app, task_id)
    row, new = store.cancels.request(task_id, reason, requested_by or requester())
    answers, error = _tell_workers(app, task_id, row)
    stage, fate = _fate(app, task_id, beat, answers, state)
    return Cancelled(row, new, stage, fate, error)


def where_is(app: Any, task_id: str) -> tuple[str, str]:
    """Where job ``task_id`` stands, and what a cancel would do to it (the web view's
    confirmation): its last beat, the workers' answer (within a second), its state."""
    store = require_store(app, "cancelling a job")
    beat = store.progress.get(task_id)
    answers, _ = _tell_workers(app, task_id)
    return _fate(app, task_id, beat, answers, _result_state(app, task_id))


def _tell_workers(
    app: Any, task_id: str, row: Cancellation | None = None
) -> tuple[dict[str, Any], str | None]:
    """Broadcast the cancel ``row`` (if given), then ask where the job is: ``{worker:
    {task_id: [state, info]}}``, or an error line when the broker cannot be reached."""
    try:
        with app.connection_for_write() as connection:
            # A broker that is down: one quick retry, not Celery's publish retries.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=1)
            if row is not None:
                _broadcast(app, row, connection)
            inspect = app.control.inspect(timeout=INSPECT_TIMEOUT, connection=connection)
            return inspect.query_task(task_id) or {}, None
    except Exception as exc:  # the store has the cancel: the workers read it there
        return {}, str(exc) or type(exc).__name__


def _broadcast(app: Any, row: Cancellation, connection: Any) -> None:
    app.control.broadcast(
        "reliable_cancel",
        arguments={
            "task_id": row.task_id,
            "reason": row.reason,
            "requested_by": row.requested_by,
            "requested_at": row.requested_at.isoformat(),
        },
        connection=connection,
    )


def _fate(
    app: Any,
    task_id: str,
    beat: Progress | None,
    answers: dict[str, Any],
    state: str | None,
) -> tuple[str, str]:
    """Where the job stands (its last beat and result state before the cancel, what
    the workers said after it), and what the cancel does to it."""
    not_started = (NOT_STARTED, "it ends CANCELLED when a worker would start it")
    if beat is not None:
        age = beat.age(utcnow())
        limit = stale_after(app, beat.task_name)
        if limit is None or age <= limit:
            where = f" on {beat.hostname}" if beat.hostname else ""
            return BEATING, (
                f"it runs with a heartbeat{where} (last beat {age:.1f} s ago): it ends "
                "CANCELLED at its next beat"
            )
    for worker, found in answers.items():
        where, info = (found or {}).get(task_id, (None, {}))
        if where == "active":
            task = app.tasks.get((info or {}).get("name") or "")
            if getattr(task, "_reliable_heartbeat_timeout", None) is not None:
                return BEATING, (
                    f"it runs with a heartbeat on {worker}: it ends CANCELLED at its next beat"
                )
            return RUNNING, (
                f"it runs on {worker} without a heartbeat: nothing interrupts it, it runs to "
                "its end (a retry of it would end CANCELLED)"
            )
        if where in ("reserved", "scheduled"):
            return not_started
    if state in TERMINAL_STATES:
        return ENDED, f"it already ended ({state}): nothing is left to cancel"
    if state in ("RETRY", "SNOOZED"):
        return BETWEEN_ATTEMPTS, (
            f"it waits for its next attempt ({state}): that ends CANCELLED when a worker "
            "would start it"
        )
    return not_started


def _result_state(app: Any, task_id: str) -> str | None:
    """The job's state in the result backend; None when it cannot say."""
    try:
        return str(app.AsyncResult(task_id).state)
    except Exception:  # no result backend, or one that is down: the state is unknown
        return None
