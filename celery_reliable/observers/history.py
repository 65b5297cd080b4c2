"""The outcome history: counts per task, queue and minute, written to the store.

Only worker processes record (the worker's bootstep turns the recorder on, and each
prefork pool process when it starts): an eager ``apply()`` in a test or a script
leaves no history and starts no thread. The execution only appends one tuple to a
deque (thread-safe, no lock, well under a microsecond); a background thread of the
same process sums the tuples per minute and writes them every
``reliable_history_interval`` seconds in one statement. The worker writes what is
left when its pool has finished (and each prefork child when it exits), so a warm
shutdown loses nothing; a process killed with SIGKILL loses at most one interval of counts. A
store that is down keeps the sums in memory (bounded) until it is back.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import deque
from time import time
from typing import Any

from celery_reliable.errors import StoreUnavailable
from celery_reliable.observers.base import Observer
from celery_reliable.signals import OutcomeEvent, task_outcome
from celery_reliable.store.history import HistoryKey, MinuteCounts, aggregate

logger = logging.getLogger("celery_reliable.history")

#: Sums kept in memory while the store is down, at most; the oldest go first.
MAX_PENDING_ROWS = 50_000

_recorders: weakref.WeakSet[HistoryObserver] = weakref.WeakSet()


class HistoryObserver(Observer):
    name = "history"

    def __init__(self, app: Any, interval: float) -> None:
        super().__init__(app)
        self.interval = interval
        #: Recording on: in a worker process, between its start and its stop.
        self.active = False
        self._reset()
        _recorders.add(self)

    def _reset(self) -> None:
        #: (time, task, queue, outcome, duration) of executions not summed yet.
        self._events: deque[tuple[float, str, str | None, str, float | None]] = deque()
        #: Sums not written yet (a failed write keeps them here).
        self._pending: dict[HistoryKey, MinuteCounts] = {}
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._failing = False

    def connect(self) -> None:
        task_outcome.connect(self._outcome, dispatch_uid=f"celery_reliable:history:{id(self)}")

    def disconnect(self) -> None:
        task_outcome.disconnect(dispatch_uid=f"celery_reliable:history:{id(self)}")

    def _outcome(self, sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        # The hot path, instead of Observer._outcome: a tuple and an append.
        if not self.active or event is None or sender is None or sender.app is not self.app:
            return
        self._events.append((time(), sender.name, event.queue, event.counted_as, event.duration))
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is not None or not self.active:
                return
            thread = threading.Thread(
                target=_flush_every,
                args=(weakref.ref(self), self._stopped, self.interval),
                name="celery_reliable-history",
                daemon=True,
            )
            thread.start()
            self._thread = thread

    def flush(self) -> int:
        """Write what was recorded so far; returns the rows written (0 if the store is
        down: the sums are kept for the next flush)."""
        from celery_reliable.store import store_for

        with self._flush_lock:
            events = self._events
            drained = []
            while True:
                try:
                    drained.append(events.popleft())
                except IndexError:
                    break
            aggregate(drained, self._pending)
            if not self._pending:
                return 0
            try:
                store = store_for(self.app)
                if store is None:
                    self._pending.clear()
                    return 0
                written = store.history.add(self._pending)
            except StoreUnavailable as exc:
                if not self._failing:
                    logger.warning(
                        "celery_reliable: outcome history not written, kept in memory until "
                        "the store is back: %s",
                        exc,
                    )
                self._failing = True
                self._trim()
                return 0
            except Exception:
                # Not an outage: rows the database refuses (a name longer than its
                # column) would be refused at every flush. Dropped, said once.
                logger.exception(
                    "celery_reliable: %d outcome-history rows cannot be written; dropped",
                    len(self._pending),
                )
                self._pending = {}
                return 0
            if self._failing:
                logger.info("celery_reliable: outcome history written again")
            self._failing = False
            self._pending = {}
            return written

    def _trim(self) -> None:
        excess = len(self._pending) - MAX_PENDING_ROWS
        if excess > 0:
            for key in sorted(self._pending, key=lambda k: k[1])[:excess]:
                del self._pending[key]
            logger.warning("celery_reliable: dropped %d minutes of outcome history", excess)

    def activate(self) -> None:
        """Start recording (a worker process starts); the writer thread starts with
        the first execution."""
        self.active = True

    def stop(self) -> None:
        """Stop recording and the writer thread, after a last flush (the worker has
        stopped, its pool included)."""
        with self._flush_lock:
            self.active = False
            self._stopped.set()
            self._stopped = threading.Event()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        try:
            self.flush()
        except Exception:
            logger.exception("celery_reliable: the last outcome-history flush failed")

    def after_fork_in_child(self) -> None:
        # The parent's events are the parent's to write; its thread did not come along.
        self._reset()


def _flush_every(
    ref: weakref.ref[HistoryObserver], stopped: threading.Event, interval: float
) -> None:
    while not stopped.wait(interval):
        observer = ref()
        if observer is None:
            return  # the app is gone, and its observers with it
        try:
            observer.flush()
        except Exception:
            logger.exception("celery_reliable: writing the outcome history failed")
        del observer


def activate_all(**_: Any) -> None:
    """Turn on every recorder of this process: a prefork pool process starts."""
    for observer in list(_recorders):
        observer.activate()


def flush_all(**_: Any) -> None:
    """Flush every recorder of this process: a pool child exiting, the interpreter
    exiting with a worker that never stopped (an embedded one left running)."""
    for observer in list(_recorders):
        observer.stop()


def _after_fork_in_child() -> None:
    for observer in list(_recorders):
        observer.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(flush_all)
