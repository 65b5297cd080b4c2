"""The store's outages, said once each: a WARNING when it stops answering a worker
process, one line when it answers again.

Each keyed execution that cannot claim its key is ``RETRIED`` by the built-in
``StoreUnavailable`` rule and logs its own INFO outcome line; during an outage of
minutes that is many lines at INFO and nothing an operator is paged by. Each
``Store`` (one per app and process: prefork children have their own) keeps one.
"""

from __future__ import annotations

import logging
import threading
from time import monotonic

logger = logging.getLogger("celery_reliable.store")


class Outage:
    def __init__(self) -> None:
        self._since: float | None = None
        self._failures = 0
        self._lock = threading.Lock()

    def failed(self, error: BaseException) -> None:
        """A claim (or a batch member's ending) met ``StoreUnavailable``: the first one
        of an outage warns."""
        with self._lock:
            first = self._since is None
            if first:
                self._since = monotonic()
            self._failures += 1
        if first:
            logger.warning(
                "celery_reliable: the store is unavailable (%s); keyed tasks are retried "
                "until it answers (StoreUnavailable), dead letters are logged whole, "
                "batch members' endings wait in the broker",
                error,
            )

    def answered(self) -> None:
        """A claim got an answer: the end of an outage, if there was one. One attribute
        read otherwise (every keyed execution calls it)."""
        if self._since is None:
            return
        with self._lock:
            since, failures = self._since, self._failures
            self._since, self._failures = None, 0
        if since is not None:
            logger.warning(
                "celery_reliable: the store answers again, after %.0f s (%d claims failed "
                "in this process meanwhile)",
                monotonic() - since,
                failures,
            )
