"""One execution's heartbeat: ``self.heartbeat()`` from the body of a task with
``heartbeat_timeout``.

A beat costs one ``utime`` on the worker's beat board (``board.py``), and at most
once a second one store write that pushes the idempotency claim's lease to
``heartbeat_timeout`` + grace from now: a keyed task that beats keeps its key however
long it runs, and one that stops beating loses it soon after it is ended, not after
its hard time limit.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from time import monotonic
from typing import TYPE_CHECKING, Any

from celery_reliable.errors import StoreUnavailable
from celery_reliable.longrun import board

if TYPE_CHECKING:
    from celery_reliable.claims import ReceiptHolder

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
        "details",
        "in_body",
        "last",
        "progress",
        "receipt",
        "task_id",
        "task_name",
        "timeout",
    )

    def __init__(self, task_name: str, task_id: str, timeout: float) -> None:
        self.task_name = task_name
        self.task_id = task_id
        self.timeout = timeout
        self.last = self._written = monotonic()
        self.in_body = False
        #: The idempotency claim whose lease the beats renew (a keyed task).
        self.receipt: ReceiptHolder | None = None
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
        self._touch()
        if progress is not None:
            self.progress = progress
        if details:
            self.details = details
        if self.receipt is not None and self.last - self._written >= WRITE_INTERVAL:
            self._written = self.last
            self._renew(self.receipt)

    def _touch(self) -> None:
        self.last = monotonic()
        if self._path is not None:
            try:
                os.utime(self._path)
            except FileNotFoundError:  # the worker stopped and took its board away
                self._path = None

    def _renew(self, receipt: ReceiptHolder) -> None:
        try:
            renewed = receipt.renew()
        except StoreUnavailable as exc:
            self._warn_once(
                "its lease was not renewed (%s): if the store stays down past the lease, "
                "another execution may take the key over, and this one's atomic() then "
                "rolls back",
                exc,
            )
            return
        if not renewed:
            self._warn_once(
                "its idempotency key was taken over by another execution: this one's "
                "atomic() rolls back (LeaseLost)"
            )

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
