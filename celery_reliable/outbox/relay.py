"""The relay: the outbox's committed messages published, oldest first, each deleted once
the broker has it.

One runs as a thread in every worker (``reliable_outbox_relay``, on by default when the
app has a store), and ``celery -A proj reliable relay`` runs one as a process of its
own. Each round takes a batch at the head of the outbox (``store/outbox.py`` says how
relays take turns there), publishes its messages one by one in ``id`` order with a
producer of its own, and deletes, in the same transaction, those the broker accepted:

* Redis: accepted once its LPUSH returned;
* RabbitMQ: the relay's connection asks for publisher confirms (py-amqp's
  ``confirm_publish``): a publish returns once the broker confirmed it.

A relay killed after a publish, before the delete committed, leaves the row: it is
published again by the next relay, and the worker runs that second copy as a
DUPLICATE (``execution.py``). A broker (or store) that cannot be reached: the messages
wait in the outbox (those published before the failure are deleted), the relay says so
once per outage, tries again every half second at first and at least every 5 s, and
says when it is back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

from kombu import Producer
from kombu.exceptions import OperationalError

from celery_reliable.errors import StoreUnavailable
from celery_reliable.outbox.message import OutboxMessage
from celery_reliable.outbox.wake import LISTEN_FALLBACK, Listen, Poll, waker_for
from celery_reliable.store import Store

logger = logging.getLogger("celery_reliable.outbox")

#: Messages taken, published and deleted in one transaction.
BATCH = 100
#: Seconds between two tries while the broker or the store is down: doubling, capped.
RETRY_FIRST = 0.5
RETRY_MAX = 5.0

#: What a relay says: ``(logging level, one line)``.
Report = Callable[[int, str], None]


def log_report(level: int, line: str) -> None:
    logger.log(level, "celery_reliable outbox: %s", line)


class _Outage:
    """One line when something stops answering, one when it answers again."""

    def __init__(self, what: str, report: Report) -> None:
        self.what = what
        self.report = report
        self.since: float | None = None

    def failed(self, error: BaseException, waiting: str) -> None:
        if self.since is None:
            self.since = monotonic()
            self.report(
                logging.WARNING,
                f"{self.what} unreachable ({_short(error)}); {waiting}, trying again until "
                "it answers",
            )

    def answered(self) -> None:
        if self.since is not None:
            self.report(
                logging.WARNING,
                f"{self.what} reachable again after {monotonic() - self.since:.1f}s",
            )
            self.since = None


class Relay:
    """Publishes ``store``'s outbox to ``app``'s broker until asked to stop."""

    def __init__(
        self,
        app: Any,
        store: Store,
        *,
        poll_interval: float,
        report: Report = log_report,
        batch: int = BATCH,
    ) -> None:
        self.app = app
        self.store = store
        self.poll_interval = poll_interval
        self.report = report
        self.batch = batch
        self.published = 0
        self._connection: Any = None
        self._producer: Producer | None = None
        self._broker = _Outage("broker", report)
        self._store = _Outage("store", report)
        self._last_error: str | None = None
        self._waker: Poll | Listen | None = None

    # -- the loop --------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set; never raises (a failure is said, and tried again)."""
        self._waker = waker_for(self.store.engine, self.poll_interval)
        how = (
            f"woken by each commit's NOTIFY, and looking every "
            f"{self.poll_interval * LISTEN_FALLBACK:g}s"
            if self._waker.listens
            else f"looking every {self.poll_interval:g}s"
        )
        self.report(
            logging.INFO,
            f"relay started: outbox in {_url(self.store.engine.url)} ({how}), broker "
            f"{self.app.connection_for_write().as_uri()}",
        )
        retry = RETRY_FIRST
        try:
            while not stop.is_set():
                try:
                    moved = self.round()
                except Exception as exc:
                    self._failed(exc)
                    stop.wait(retry)
                    retry = min(retry * 2, RETRY_MAX)
                    continue
                retry = RETRY_FIRST
                if moved:
                    continue  # more may be waiting: look again at once
                self._waker.wait(stop)
        finally:
            self._waker.close()
            self._disconnect()
            self.report(
                logging.INFO, f"relay stopped ({_messages(self.published)} published by it)"
            )

    def round(self) -> int:
        """Look, then publish one batch: how many messages it moved (0: none waits, or
        another relay holds the head)."""
        if not (self._waker is not None and self._waker.listens):
            # Polling (SQLite): a read that takes no lock, then the broker's connection,
            # before the transaction that holds the database's write lock.
            if self.store.outbox.first_id() is None:
                self._store.answered()
                return 0
            self._producer_now()
        started = monotonic()
        with self.store.outbox.head(self.batch) as batch:
            self._store.answered()
            if batch is None or not batch.rows:
                return 0
            producer = self._producer_now()
            queues = self.app.amqp.queues
            for row in batch.rows:
                OutboxMessage.from_row(row).publish(producer, queues)
                batch.published(row)
        self._broker.answered()
        self._last_error = None
        moved = len(batch.done)
        self.published += moved
        first, last = batch.done[0], batch.done[-1]
        self.report(
            logging.DEBUG,
            f"published {_messages(moved)} (outbox ids {first}"
            f"{f'..{last}' if last != first else ''}) in {(monotonic() - started) * 1000:.0f} ms",
        )
        return moved

    # -- failures --------------------------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, StoreUnavailable):
            self._store.failed(exc, "messages wait in the outbox")
            return
        if self._is_broker_error(exc):
            self._disconnect()
            self._broker.failed(exc, "messages wait in the outbox")
            return
        # Not an outage: a message that cannot be published (or a bug). It stays at the
        # head and is tried again; said once per error.
        said = repr(exc)
        if self._last_error != said:
            self._last_error = said
            self.report(logging.ERROR, f"publishing failed ({_short(exc)}); trying again")

    def _is_broker_error(self, exc: Exception) -> bool:
        if isinstance(exc, (OperationalError, OSError)):
            return True
        connection = self._connection or self.app.connection_for_write()
        try:
            errors = tuple(connection.connection_errors) + tuple(connection.channel_errors)
        except Exception:  # the transport cannot even be loaded
            return False
        return isinstance(exc, errors)

    # -- the broker ------------------------------------------------------------------

    def _producer_now(self) -> Producer:
        if self._producer is None:
            connection = self.app.connection_for_write()
            if connection.transport.driver_type == "amqp":
                # Publisher confirms: basic_publish returns once RabbitMQ has the message.
                connection = self.app.connection_for_write(
                    transport_options={"confirm_publish": True}
                )
            connection.ensure_connection(max_retries=1)
            self._connection = connection
            self._producer = Producer(connection, auto_declare=False)
        return self._producer

    def _disconnect(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # a connection already lost
                logger.debug("releasing the relay's broker connection failed", exc_info=True)


class RelayThread:
    """The relay of a worker, in a thread of its own (``worker/bootstep.py``)."""

    def __init__(self, app: Any, store: Store, poll_interval: float) -> None:
        self.relay = Relay(app, store, poll_interval=poll_interval)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.relay.run,
            args=(self._stop,),
            name=f"celery_reliable-outbox-relay-{os.getpid()}",
            daemon=True,
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


def _messages(count: int) -> str:
    return f"{count} message" if count == 1 else f"{count} messages"


def _url(url: Any) -> str:
    return str(url.render_as_string(hide_password=True))


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
