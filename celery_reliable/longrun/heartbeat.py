"""One execution's heartbeat: ``self.heartbeat()`` from the body of a task with
``heartbeat_timeout``.

A beat costs one ``utime`` on the worker's beat board (``board.py``), and at most
once a second one store transaction: the progress row (``store/progress.py``) and, for
a keyed task, its claim's lease pushed to ``heartbeat_timeout`` + grace from now; the
job's cancel is read in the same transaction. A keyed task that beats keeps its key
however long it runs, and one that stops beating loses it soon after it is ended, not
after its hard time limit. A job cancelled while it runs (``celery reliable cancel``)
gets ``Cancel`` raised by the beat that finds it: it ends ``CANCELLED``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from time import monotonic
from typing import TYPE_CHECKING, Any

from celery_reliable.errors import StoreUnavailable
from celery_reliable.longrun import board
from celery_reliable.outcomes import Cancel

if TYPE_CHECKING:
    from celery_reliable.claims import ReceiptHolder
    from celery_reliable.limits.slots import Held
    from celery_reliable.store import Store

logger = logging.getLogger("celery_reliable.heartbeat")

#: Seconds between two store writes of one execution's beats (the lease's renewal).
WRITE_INTERVAL = 1.0

#: The beating executions of this process, by the thread that runs them (the monitor
#: of a threads pool, and the signal handler of a prefork child, look here).
_by_thread: dict[int, Heartbeat] = {}


class Heartbeat:
    """The heartbeat of one execution, from its start to its end."""

    __slots__ = (
        "_path",
        "_thread",
        "_warned",
        "_written",
        "_wrote",
        "details",
        "hostname",
        "in_body",
        "last",
        "lease",
        "progress",
        "receipt",
        "slots",
        "started_at",
        "store",
        "task_id",
        "task_name",
        "timeout",
    )

    def __init__(  # noqa: PLR0917 - who runs, and where the beats go
        self,
        task_name: str,
        task_id: str,
        timeout: float,
        store: Store | None = None,
        hostname: str | None = None,
        lease: float = 0.0,
    ) -> None:
        self.task_name = task_name
        self.task_id = task_id
        self.timeout = timeout
        #: Where the beats are written (progress, lease): None without a store.
        self.store = store
        self.hostname = hostname
        #: The lease a beat gives the claim (the task's ``_reliable_lease``).
        self.lease = lease
        # Naive UTC, as the store's columns hold it (not store.timeutil: importing the
        # store package would load SQLAlchemy into every process that imports us).
        self.started_at = datetime.now(timezone.utc).replace(tzinfo=None)
        self.last = monotonic()
        self._written = float("-inf")  # the first beat is written at once
        self._wrote = False
        self.in_body = False
        #: The idempotency claim whose lease the beats renew (a keyed task).
        self.receipt: ReceiptHolder | None = None
        #: The limits' slots whose leases the beats renew.
        self.slots: Held | None = None
        self.progress: float | None = None
        self.details: dict[str, Any] = {}
        self._warned = False
        self._path = self._pin(board.board_path())
        self._thread = threading.get_ident()
        _by_thread[self._thread] = self

    def _pin(self, where: str | None) -> str | None:
        if where is None:
            return None
        try:
            return board.pin(where, self.task_id, self.task_name, self.timeout)
        except OSError as exc:
            # The board went away (a worker stopping) or /dev/shm is full: the body runs,
            # unwatched; its time limit still applies.
            logger.warning(
                "task %s[%s]: not on the heartbeat board (%s): a silence is not caught",
                self.task_name,
                self.task_id,
                exc,
            )
            return None

    def run(self, body: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        """Run the body; the silence counts from here (a claim may have taken a while)."""
        self._touch()
        self.in_body = True
        try:
            return body(*args, **kwargs)
        finally:
            self.in_body = False

    def beat(self, progress: float | None, details: dict[str, Any]) -> None:
        """Raises ``Cancel`` when the store says the job was cancelled."""
        self._touch()
        if progress is not None:
            self.progress = progress
        if details:
            self.details = details
        if self.last - self._written >= WRITE_INTERVAL:
            self._written = self.last
            if self.store is not None:
                self._write(self.store)
            if self.slots is not None:
                self.slots.renew()

    def alive(self) -> None:
        """A beat that writes nothing to the store: the body is inside a transaction
        of the store (a ``step.advance`` in ``self.atomic()``), which a write of its own
        would wait for on SQLite. That transaction renews a keyed task's lease itself."""
        self._touch()

    def _touch(self) -> None:
        self.last = monotonic()
        if self._path is not None:
            try:
                os.utime(self._path)
            except FileNotFoundError:  # the worker stopped and took its board away
                self._path = None

    def _write(self, store: Store) -> None:
        receipt = self.receipt
        claim = receipt.claim if receipt is not None else None
        if claim is not None and claim.completed and not claim.result_pending:
            claim = None  # nothing left to hold: the receipt is final
        try:
            beat = store.progress.beat(
                self.task_id,
                self.task_name,
                self.hostname,
                os.getpid(),
                self.started_at,
                self.progress,
                self.details,
                claim,
                self.lease,
            )
        except StoreUnavailable as exc:
            self._warn_once(
                "not written to the store (%s): its progress is not shown, and if the store "
                "stays down past a keyed task's lease another execution may take the key "
                "over, and this one's atomic() then rolls back",
                exc,
            )
            return
        self._wrote = True
        if not beat.kept:
            self._warn_once(
                "its idempotency key was taken over by another execution: this one's "
                "atomic() rolls back (LeaseLost)"
            )
        if beat.cancel is not None:
            # Raised in the body, which called heartbeat(): the execution ends CANCELLED.
            raise Cancel(beat.cancel.describe())

    def _warn_once(self, message: str, *args: Any) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(f"task %s[%s] heartbeat: {message}", self.task_name, self.task_id, *args)

    def silence(self) -> float:
        return monotonic() - self.last

    def overdue(self) -> bool:
        """In the body and silent for longer than the timeout."""
        return self.in_body and self.silence() > self.timeout

    def end(self) -> None:
        self.in_body = False
        if _by_thread.get(self._thread) is self:
            del _by_thread[self._thread]
        if self._path is not None:
            board.unpin(self._path)
            self._path = None
        if self._wrote and self.store is not None:
            self._wrote = False
            # Unreachable: the row is stale from now on, and pruned with the receipts.
            with contextlib.suppress(StoreUnavailable):
                self.store.progress.finish(self.task_id)


def of_thread(ident: int) -> Heartbeat | None:
    return _by_thread.get(ident)


def check_progress(progress: object) -> float | None:
    """``heartbeat(progress=...)``: None or a fraction done, 0 to 1."""
    if progress is None:
        return None
    if isinstance(progress, bool) or not isinstance(progress, (int, float)):
        raise TypeError(f"heartbeat(progress=...) must be a number from 0 to 1, got {progress!r}")
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"heartbeat(progress=...) must be from 0 to 1, got {progress!r}")
    return float(progress)
