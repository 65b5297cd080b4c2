"""The worker bootstep: validate settings and build observers when the worker starts,
load the store's cancels and pauses and keep reading them (``worker/cancels.py``,
``worker/pauses.py``), relay the outbox in a thread (``outbox/relay.py``), prune old
receipts, heartbeats, steps, cancels and periodic slots, expired unique locks and old
outcome history on a timer, and write the outcome history when the worker stops.

So that a misspelt ``reliable_*`` setting, or a task that needs a store when there is
none, stops the worker at start-up with a clear error instead of surfacing on the
first execution.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.exceptions import ImproperlyConfigured

from celery_reliable.batches.counter import keep_counting_until_shutdown, stop_endings_counter
from celery_reliable.config import as_written, misspelt_keys, settings_for
from celery_reliable.delivery.broker import uses_redis
from celery_reliable.delivery.redelivery import redelivery_for, stop_redelivery
from celery_reliable.docs import docs_url
from celery_reliable.errors import MissingDependency, StoreUnavailable
from celery_reliable.longrun.board import open_board
from celery_reliable.longrun.interrupt import install_handler
from celery_reliable.longrun.monitor import start_monitor, stop_monitor
from celery_reliable.store import store_for
from celery_reliable.wiring import activate_history, flush_history, observers_for
from celery_reliable.worker.cancels import CancelWatch
from celery_reliable.worker.misconfigured import WorkerMisconfigured
from celery_reliable.worker.pauses import PauseWatch
from celery_reliable.worker.sampler import queue_depth_sampler
from celery_reliable.worker.stuck import kill_on_loop

logger = logging.getLogger("celery_reliable.worker")


class ReliableWorkerStep(bootsteps.StartStopStep):
    """Added to ``app.steps['worker']``, by its dotted name, when the app's first
    ReliableTask is bound (``wiring.install``)."""

    name = "celery_reliable"
    # After the pool: its prefork children are forked before our threads start. A
    # thread running at a fork can hold a lock the child then waits on forever: the
    # queue-depth sampler's first query on kombu's SQLAlchemy transport holds
    # SQLAlchemy's mapper-configuration lock, and a child forked meanwhile hung on it
    # at its first result-backend write (found by `make demo`).
    requires = ("celery.worker.components:Timer", "celery.worker.components:Pool")

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._timer_entry: Any = None
        self._sampler: Any = None
        self._redelivery: Any = None
        self._cancels: CancelWatch | None = None
        self._pauses: PauseWatch | None = None
        self._relay: Any = None
        self._endings: Any = None
        # First: a misspelt prefix may be why a setting below seems to be ignored.
        warn_of_misspelt_keys(worker.app)
        try:
            self.settings = settings_for(worker.app)  # ImproperlyConfigured on a bad setting
            self.store = store_for(worker.app)
            self._check_store(worker.app)
            # A feature set on purpose whose library is missing stops the worker here.
            observers_for(worker.app, strict=True)
            # Before the consumer connects (Consumer's Connection step, at start).
            self.atomic_fetch = install_atomic_fetch(worker.app, self.settings)
        except (ImproperlyConfigured, MissingDependency) as exc:
            # One line saying what is wrong and how to fix it, instead of a traceback
            # through Celery's start-up code that ends in it.
            raise WorkerMisconfigured(exc) from exc
        # Before the pool starts: its prefork processes inherit the board's path.
        self.beat_board = open_board()

    def _check_store(self, app: Any) -> None:
        if self.store is not None:
            return
        needing = [
            name
            for name, task in app.tasks.items()
            if getattr(task, "_reliable_key", None) or getattr(task, "_reliable_unique", None)
        ]
        if needing:
            raise ImproperlyConfigured(
                f"tasks {sorted(needing)} use idempotency_key/unique, which need a "
                f"store, but {as_written(app, 'reliable_database_url')} is None"
            )

    def start(self, worker: Any) -> None:
        activate_history(worker.app)
        # Watched until the pool has finished (worker_shutdown), not only until this
        # step stops: a warm shutdown waits for running bodies, which may be stuck.
        start_monitor(worker, self.beat_board, kill_on_loop(worker))
        install_handler()  # a solo pool runs bodies in this process's main thread
        self._redelivery = redelivery_for(worker, self.settings)
        if self._redelivery is not None:
            self._redelivery.start()
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
            # Before the consumer (the last step) receives a message: a job cancelled
            # while no worker ran is not started by this one.
            self._cancels = CancelWatch(self.store, self.settings.receipt_ttl)
            self._cancels.start(worker.timer)
            # Before the consumer too: a paused queue is not consumed at all.
            self._pauses = PauseWatch(self.store, worker)
            self._pauses.start(worker.timer)
            self._timer_entry = worker.timer.call_repeatedly(
                self.settings.prune_interval, self.prune, priority=10
            )
            if self.settings.outbox_relay:
                self._relay = start_relay(worker.app, self.store, self.settings)
            self._endings = start_endings_counter(worker.app, self.store)

    def stop(self, worker: Any) -> None:
        # A warm shutdown stops this step before the pool, whose threads may still be
        # running tasks: write what is counted, and write the rest, and stop, on
        # worker_shutdown (worker/receivers.py). Each prefork child writes its own as it
        # exits.
        flush_history(worker.app, final=False)
        if self._redelivery is not None:
            # The pool may still be running tasks: their messages are kept alive until
            # worker_shutdown (after the pool), but this worker rescues no more.
            self._redelivery.stop_rescuing()
        if self._sampler is not None:
            self._sampler.stop()
            self._sampler = None
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None
        if self._cancels is not None:
            self._cancels.stop()
            self._cancels = None
        if self._pauses is not None:
            self._pauses.stop()
            self._pauses = None
        if self._relay is not None:
            # Nothing is lost by stopping mid-batch: what was not deleted is published
            # again (and runs once).
            self._relay.stop()
            self._relay = None
        if self._endings is not None:
            # The pool may still be running members: their endings are counted until
            # it has finished (worker_shutdown), the last of them too, rather than left
            # to another worker's counter (or this one's after a restart).
            keep_counting_until_shutdown(worker, self._endings)
            self._endings = None

    def terminate(self, worker: Any) -> None:
        # A cold shutdown (and an embedded test worker's exit) terminates the steps
        # instead of stopping them, and sends no worker_shutdown: the same clean-up,
        # and the history's last write.
        self.stop(worker)
        stop_endings_counter(worker)
        stop_redelivery(worker)
        stop_monitor(worker)
        flush_history(worker.app)

    def prune(self) -> None:
        store = self.store
        if store is None:
            return
        try:
            receipts = store.receipts.prune(self.settings.receipt_ttl)
            locks = store.unique.prune()
            minutes = store.history.prune(self.settings.history_retention)
            # Heartbeats left by workers that died: as old as a receipt kept.
            beats = store.progress.prune(self.settings.receipt_ttl)
            # Steps of jobs that ended (or were abandoned) that long ago.
            steps = store.steps.prune(self.settings.receipt_ttl)
            # A job cancelled as long ago that has not started yet is forgotten.
            cancels = store.cancels.prune(self.settings.receipt_ttl)
            # Limit keys (reliable_limits_url = "store") nobody took that long.
            limit_keys = store.limits.prune(self.settings.receipt_ttl)
            # Periodic slots as old as a receipt kept (the beat refuses a catch-up that
            # long), but each entry's newest: where its schedule stands.
            slots = store.beat_runs.prune(self.settings.receipt_ttl)
            # Batches completed (or abandoned) as long ago as a receipt kept.
            batches = store.batches.prune(self.settings.receipt_ttl)
        except StoreUnavailable as exc:
            logger.warning("celery_reliable: pruning skipped, store unavailable: %s", exc)
            return
        pruned = (receipts, locks, minutes, beats, steps, cancels, limit_keys, slots, batches)
        if any(pruned):
            logger.info(
                "celery_reliable: pruned %d receipts, %d heartbeats, %d steps, %d cancels, "
                "%d limit keys, %d periodic slots and %d batches older than %gs, %d expired "
                "unique locks and %d outcome-history rows older than %gs",
                receipts,
                beats,
                steps,
                cancels,
                limit_keys,
                slots,
                batches,
                self.settings.receipt_ttl,
                locks,
                minutes,
                self.settings.history_retention,
            )


def warn_of_misspelt_keys(app: Any) -> None:
    """One WARNING per key meant as ours that is never read (``CELERY_RELAIBLE_...``):
    not an error, as the key is not ours, but what it sets stays off."""
    for key, meant in misspelt_keys(app):
        logger.warning(
            "celery_reliable: the setting %r is not read: did you mean %r? (the settings: %s)",
            key,
            meant,
            docs_url("configuration"),
        )


def start_endings_counter(app: Any, store: Any) -> Any:
    """The counter of batch members' endings in a thread of this worker, when they
    wait in the broker's Redis (``batches/counter.py``); None otherwise."""
    from celery_reliable.batches.tally import endings_list_for

    endings = endings_list_for(app)
    if endings is None:
        return None
    from celery_reliable.batches.counter import EndingsCounter

    counter = EndingsCounter(app, store, endings)
    counter.start()
    return counter


def start_relay(app: Any, store: Any, settings: Any) -> Any:
    """The outbox's relay in a thread of this worker (``reliable_outbox_relay``): every
    worker of an app with a store runs one, so that the outbox never waits for a
    process of its own; relays take turns (``store/outbox.py``)."""
    from celery_reliable.outbox.relay import RelayThread

    relay = RelayThread(app, store, settings.outbox_poll_interval)
    relay.start()
    return relay


def install_atomic_fetch(app: Any, settings: Any) -> bool:
    """The atomic fetch on a Redis broker (celery_reliable.delivery.atomic_fetch); imported only
    then, as it imports kombu's Redis transport, which needs the redis extra."""
    if not settings.atomic_fetch or not uses_redis(app):
        return False
    from celery_reliable.delivery.atomic_fetch import install

    return install(app, settings)
