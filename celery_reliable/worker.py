"""The worker bootstep: validate settings and wire observers when the worker starts,
and prune old receipts and expired unique locks on a timer.

So that a misspelt ``reliable_*`` setting, or a task that needs a store when there is
none, stops the worker at start-up with a clear error instead of surfacing on the
first execution.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.exceptions import ImproperlyConfigured

from celery_reliable.config import settings_for
from celery_reliable.errors import StoreUnavailable
from celery_reliable.store import store_for
from celery_reliable.wiring import observers_for, queue_depth_sampler

logger = logging.getLogger("celery_reliable.worker")


class ReliableWorkerStep(bootsteps.StartStopStep):
    """Added to ``app.steps['worker']`` when the app's first ReliableTask is bound."""

    name = "celery_reliable"
    requires = ("celery.worker.components:Timer",)

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        app = worker.app
        self.settings = settings_for(app)  # raises ImproperlyConfigured on a bad setting
        self.store = store_for(app)
        if self.store is None:
            needing = [
                name
                for name, task in app.tasks.items()
                if getattr(task, "_reliable_key", None) or getattr(task, "_reliable_unique", None)
            ]
            if needing:
                raise ImproperlyConfigured(
                    f"tasks {sorted(needing)} use idempotency_key/unique, which need a "
                    "store, but reliable_database_url is None"
                )
        observers_for(app)
        self._timer_entry: Any = None
        self._sampler: Any = None

    def start(self, worker: Any) -> None:
        queues = list(worker.app.amqp.queues.consume_from or worker.app.amqp.queues)
        self._sampler = queue_depth_sampler(worker.app, queues)
        if self._sampler is not None:
            self._sampler.start()
        if self.store is not None:
            try:
                self.store.ensure_schema()
            except StoreUnavailable as exc:
                # Not fatal: executions that need the store retry until it is back.
                logger.error("celery_reliable store not ready at start-up: %s", exc)
            self._timer_entry = worker.timer.call_repeatedly(
                self.settings.prune_interval, self.prune, priority=10
            )

    def stop(self, worker: Any) -> None:
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None

    def prune(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            receipts = store.receipts.prune(self.settings.receipt_ttl)
            locks = store.unique.prune()
        except StoreUnavailable as exc:
            logger.warning("celery_reliable: pruning skipped, store unavailable: %s", exc)
            return
        if receipts or locks:
            logger.info(
                "celery_reliable: pruned %d receipts older than %gs and %d expired unique locks",
                receipts,
                self.settings.receipt_ttl,
                locks,
            )
