"""Reading the store from a worker's main process without holding up its event loop:
what the cancels (``cancels.py``) and the pauses (``pauses.py``) share.

A :class:`StoreReader` calls ``read()`` every ``every`` seconds in a thread of its own
(a store that is slow or down never holds up the event loop), and hands what it read
to ``apply`` in the worker's timer (the event loop, on prefork) every ``apply_every``
seconds: the worker's state (Celery's revoked set, the consumer's queues) is changed
there only. A store that cannot be reached is said once, and once more when it is
back; what was read before stays in force meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from celery_reliable.errors import StoreUnavailable

T = TypeVar("T")

#: Seconds between two reads of the store.
REFRESH_INTERVAL = 2.0
#: Seconds between two hand-overs of what the reading thread found, in the worker's own
#: timer.
APPLY_INTERVAL = 1.0


class StoreReader(Generic[T]):
    """Reads the store in a thread, applies what it read in the worker's timer."""

    def __init__(
        self,
        what: str,
        read: Callable[[], T],
        apply: Callable[[list[T]], None],
        *,
        logger: logging.Logger,
        every: float = REFRESH_INTERVAL,
        apply_every: float = APPLY_INTERVAL,
    ) -> None:
        #: What is read, for the log: ``cancels``, ``pauses``.
        self.what = what
        self._read = read
        self._apply = apply
        self._logger = logger
        self.every = every
        self.apply_every = apply_every
        self._found: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._down = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"celery_reliable-{what}", daemon=True
        )
        self._timer_entry: Any = None

    def start(self, timer: Any) -> None:
        """Start reading (the caller has loaded what the worker needs before it
        consumes) and applying in ``timer``, the worker's."""
        self._thread.start()
        self._timer_entry = timer.call_repeatedly(self.apply_every, self.tick, priority=10)

    def failed_at_start(self) -> None:
        """The caller's own first read failed (and said so): the first read that works
        is said too."""
        self._down = True

    def stop(self) -> None:
        self._stop.set()
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.read()

    def read(self) -> None:
        """One read; what it found waits for the next :meth:`tick`."""
        try:
            found = self._read()
        except StoreUnavailable as exc:
            if not self._down:
                self._down = True
                self._logger.warning(
                    "celery_reliable: %s not read, store unavailable: %s", self.what, exc
                )
            return
        except Exception:  # never let the thread die: the next read may work
            self._logger.exception("celery_reliable: %s not read", self.what)
            return
        if self._down:
            self._down = False
            self._logger.info("celery_reliable: %s read again", self.what)
        self._found.put(found)

    def tick(self) -> None:
        """In the worker's timer: what the thread read since the last tick (maybe
        nothing) goes to ``apply``."""
        results: list[T] = []
        while True:
            try:
                results.append(self._found.get_nowait())
            except queue.Empty:
                break
        self._apply(results)
