"""A thread of every worker that counts members' endings in groups.

It takes what waits in the broker's list (``tally.py``), up to a group at a time,
counts it in one store transaction (``BatchRows.members_ended``), which completes the
batches it finishes and writes their callbacks to the outbox, and only then lets the
group go. A store that does not answer: the group stays this counter's, tried again
with a backoff (short enough that its stamp stays fresh: nobody else takes it), and
the endings after it wait in the list. A worker killed while it holds a group: another
worker's counter moves it back after ``tally.STALE_AFTER`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery_reliable.batches.tally import LINGER, STALE_AFTER
from celery_reliable.errors import StoreUnavailable

if TYPE_CHECKING:
    from celery_reliable.batches.tally import EndingsList
    from celery_reliable.store import Store

logger = logging.getLogger("celery_reliable.batches")

#: Seconds between two tries while the store or Redis does not answer: doubling, capped
#: well under ``tally.STALE_AFTER`` (each try stamps the group as still held).
RETRY_FIRST = 0.5
RETRY_MAX = 4.0
#: Seconds between two looks for the groups of dead counters.
RESCUE_EVERY = 5.0
#: Seconds a counter stopping once its worker's pool has finished keeps counting what
#: waits (the endings of the members that ran during the warm shutdown) before it
#: stops; what is left then waits for another worker's counter, or this worker's next.
DRAIN_AT_SHUTDOWN = 5.0
#: The worker's attribute that holds its counter from its step's stop to
#: ``worker_shutdown``.
_WORKER_ATTR = "_reliable_endings_counter"


class EndingsCounter(threading.Thread):
    def __init__(self, app: Any, store: Store, endings: EndingsList) -> None:
        super().__init__(name="celery_reliable-batch-endings", daemon=True)
        self.app, self.store, self.endings = app, store, endings
        self.owner = endings.new_owner()
        self._stopping = threading.Event()
        self._failing: str | None = None
        self._drain = 0.0

    def stop(self, drain: float = 0.0) -> None:
        """Stop after the group in hand, and after counting what waits for up to
        ``drain`` more seconds; what it holds then goes back to the list for another
        worker (counting it twice would count nothing twice)."""
        self._drain = drain
        self._stopping.set()
        self.join(10 + drain)
        try:
            self.endings.rescue(release=self.owner)
        except Exception as exc:  # Redis gone: the group is moved back once stale
            logger.warning("celery_reliable: batch endings held at stop left for rescue: %s", exc)

    def run(self) -> None:
        from celery_reliable.batches.ending import fire_in

        on_completed = fire_in(self.app)
        tries, rescued_at = 0, 0.0
        while not self._stopping.is_set():
            try:
                if time.monotonic() - rescued_at > RESCUE_EVERY:
                    rescued_at = time.monotonic()
                    self._rescue()
                raw = self.endings.take(self.owner, linger=LINGER)
                if raw:
                    self._count(raw, on_completed)
                    self.endings.counted(self.owner)
                tries = 0
                self._answered()
            except Exception as exc:
                self._failed(exc)
                self._stopping.wait(min(RETRY_MAX, RETRY_FIRST * 2**tries))
                tries += 1
        if self._drain > 0 and tries == 0:
            self._count_what_waits(on_completed, time.monotonic() + self._drain)

    def _count_what_waits(self, on_completed: Any, deadline: float) -> None:
        """At a warm shutdown, once the pool has finished: the endings of its last
        members are in the list; count them now rather than leave them to the next
        worker (a failure leaves them there, as it would any group)."""
        try:
            while time.monotonic() < deadline:
                raw = self.endings.take(self.owner, block=0)
                if not raw:
                    return
                self._count(raw, on_completed)
                self.endings.counted(self.owner)
        except Exception as exc:
            self._failed(exc)

    def _count(self, raw: list[bytes], on_completed: Any) -> None:
        from celery_reliable.batches.tally import decode
        from celery_reliable.store.timeutil import utcnow

        group = []
        for item in raw:
            ending = decode(item)
            if ending is None:
                logger.error("celery_reliable: dropped a batch ending that is not one: %r", item)
            else:
                group.append(ending)
        self.store.batches.members_ended(group, utcnow(), on_completed)

    def _rescue(self) -> None:
        moved = sum(self.endings.rescue(release=owner) for owner in self.endings.dead_here())
        if moved:
            logger.warning(
                "celery_reliable: %d batch endings held by a dead worker of this host "
                "moved back to be counted",
                moved,
            )
        moved = self.endings.rescue()
        if moved:
            logger.warning(
                "celery_reliable: %d batch endings held by a worker silent for %gs "
                "(dead) moved back to be counted",
                moved,
                STALE_AFTER,
            )

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, StoreUnavailable):
            self.store.outage.failed(exc)
            what = f"the store does not answer ({exc})"
        else:
            what = f"{type(exc).__name__}: {exc}"
        if what != self._failing:
            self._failing = what
            log = logger.warning if isinstance(exc, StoreUnavailable) else logger.exception
            log(
                "celery_reliable: batch endings not counted yet, %s; they wait in the "
                "broker's Redis and are counted once it answers",
                what,
            )

    def _answered(self) -> None:
        if self._failing is not None:
            self._failing = None
            self.store.outage.answered()
            logger.info("celery_reliable: batch endings counted again")


def keep_counting_until_shutdown(worker: Any, counter: EndingsCounter) -> None:
    """The worker's step stops (a warm shutdown) while its pool may still run members:
    the counter goes on until ``worker_shutdown``, sent once the pool has finished."""
    setattr(worker, _WORKER_ATTR, counter)
    logger.info("celery_reliable: counting batch endings until the pool has finished its tasks")


def stop_endings_counter(worker: Any, drain: float = 0.0) -> None:
    """At ``worker_shutdown`` (``drain``: its pool's last endings are in the list) or a
    cold shutdown: stop the counter the worker's step left running."""
    counter: EndingsCounter | None = getattr(worker, _WORKER_ATTR, None)
    if counter is not None:
        setattr(worker, _WORKER_ATTR, None)
        counter.stop(drain=drain)
