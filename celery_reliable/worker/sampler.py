"""The worker's queue-depth sampler: every ``reliable_queue_depth_interval`` seconds,
in a thread of its own, the depth of each queue the worker consumes, and of the store's
outbox (how many messages wait, and how long the oldest has), handed to the observer
that publishes depths (the StatsD observer's gauges today). No metrics library is
imported here: a worker without StatsD configured never builds one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery_reliable.config import settings_for
from celery_reliable.delivery.queue_depth import depth_of
from celery_reliable.errors import StoreUnavailable
from celery_reliable.wiring import observers_for

logger = logging.getLogger("celery_reliable.queue_depth")


class QueueDepthSampler:
    """Samples the depth of the queues a worker consumes, every ``interval`` seconds,
    in a thread of its own (a slow broker never holds up the worker's event loop)."""

    def __init__(
        self,
        app: Any,
        queues: list[str],
        interval: float,
        emit: Callable[[list[tuple[str, int]]], None],
        *,
        outbox: Callable[[int, float], None] | None = None,
        store: Any = None,
    ) -> None:
        self.app = app
        self.queues = queues
        self.interval = interval
        self.emit = emit
        #: Where the outbox's gauges go, and the store whose outbox they measure.
        self.outbox = outbox
        self.store = store
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="celery_reliable-queue-depth", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.emit(self.sample())
            except Exception as exc:
                logger.warning(
                    "queue depth not sampled (%s); trying again in %gs", exc, self.interval
                )
            self.sample_outbox()
            self._stop.wait(self.interval)

    def sample_outbox(self) -> None:
        if self.outbox is None or self.store is None:
            return
        try:
            status = self.store.outbox.status()
        except StoreUnavailable as exc:
            # The store's own outage is said by those who need it (the relay, claims).
            logger.debug("outbox depth not sampled (%s)", exc)
            return
        self.outbox(status.depth, status.oldest_age)

    def sample(self) -> list[tuple[str, int]]:
        with self.app.connection_for_read() as connection:
            return [(queue, depth_of(connection, queue)) for queue in self.queues]


def queue_depth_sampler(app: Any, queues: list[str]) -> QueueDepthSampler | None:
    """The queue-depth sampler for a worker consuming ``queues``, when an observer
    publishes depths (StatsD configured); None otherwise."""
    for observer in observers_for(app):
        publish = getattr(observer, "queue_depths", None)
        if publish is not None:
            interval = settings_for(app).queue_depth_interval
            from celery_reliable.store import store_for

            return QueueDepthSampler(
                app,
                queues,
                interval,
                publish,
                outbox=getattr(observer, "outbox", None),
                store=store_for(app),
            )
    return None
