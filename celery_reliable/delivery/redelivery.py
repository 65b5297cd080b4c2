"""Redis redelivery, fast and safe: orphan rescue and keepalive.

With ``acks_late`` on Redis, kombu keeps each delivered message in the ``unacked``
hash and its delivery time in the ``unacked_index`` sorted set until it is acked; a
message whose entry is older than ``visibility_timeout`` is put back on its queue for
any worker. Two things go wrong with that alone:

* **Slow rescue.** kombu scans for such messages every 10 s, but only on every 10th
  call (kombu 5.7 makes both settable): a whole worker that died (main process and
  children, as on a lost host) has its messages back after up to
  ``visibility_timeout`` + 100 s.
* **Duplicates.** A message held longer than ``visibility_timeout`` by a worker that
  is alive (a long task, or an ETA or countdown it waits for) is handed to a second
  worker, which runs it too (celery#2599, #3270, #5306, kombu#337).

Every worker on a Redis broker runs one thread (:class:`Redelivery`) that:

* **keeps alive** the ``unacked_index`` entries of the messages it holds, every
  quarter of the visibility timeout (at most every 60 s), with ``ZADD XX`` (an entry
  acked meanwhile is not brought back); while the worker lives, nobody rescues them;
* **rescues** every ``reliable_rescue_interval`` seconds the messages whose entry is
  older than the visibility timeout (their worker stopped renewing them), under
  kombu's own ``unacked_mutex`` and with kombu's own ``restore_by_tag`` (a watched
  transaction), so that any number of workers can do it at once.

A dead worker's messages are back on their queue between ``visibility_timeout`` minus
a keepalive interval and ``visibility_timeout`` + ``reliable_rescue_interval`` after
it died. An idempotency receipt still guards the takeover: a rescued job whose dead
execution holds its key snoozes until that claim's lease ends.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Celery

from celery_reliable.config import ReliableSettings
from celery_reliable.delivery.broker import BrokerFacts

logger = logging.getLogger("celery_reliable.redelivery")

#: Messages re-queued per rescue scan; more wait for the next scan.
RESCUE_BATCH = 100


def keepalive_interval(visibility_timeout: float) -> float:
    """Seconds between refreshes: a quarter of the timeout, within 0.5 s to 60 s."""
    return max(0.5, min(visibility_timeout / 4.0, 60.0))


class Redelivery:
    """The keepalive and rescue thread of one worker (see the module)."""

    def __init__(
        self, app: Celery, worker: Any, settings: ReliableSettings, visibility_timeout: float
    ) -> None:
        self.app = app
        self.worker = worker
        self.visibility_timeout = visibility_timeout
        self.keepalive_every = keepalive_interval(visibility_timeout)
        self.rescue_every = settings.rescue_interval
        self.keepalive = settings.keepalive
        self.rescuing = settings.orphan_rescue
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(
            target=self._run, name="celery_reliable-redelivery", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop_rescuing(self) -> None:
        """The worker is stopping: rescue no more (it keeps its own messages alive
        until its pool has finished them, :meth:`stop`)."""
        self.rescuing = False

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _run(self) -> None:
        connection = None
        channel = None
        next_keepalive = next_rescue = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if channel is None:
                    connection = self.app.connection_for_read()
                    channel = connection.channel()
                if self.keepalive and now >= next_keepalive:
                    self.keep_alive(channel)
                    next_keepalive = now + self.keepalive_every
                if self.rescuing and now >= next_rescue:
                    self.rescue(channel)
                    next_rescue = now + self.rescue_every
                if self._failing:
                    logger.info("celery_reliable redelivery: the broker answers again")
                    self._failing = False
            except Exception as exc:
                if not self._failing:
                    logger.warning(
                        "celery_reliable redelivery: broker unreachable (%s); held messages "
                        "are not kept alive until it answers",
                        exc,
                    )
                    self._failing = True
                _close(connection)
                connection = channel = None
                next_keepalive = next_rescue = now + 1.0
            due = [next_keepalive] if self.keepalive else []
            if self.rescuing:
                due.append(next_rescue)
            self._stop.wait(max(0.05, min(due, default=now + 1.0) - time.monotonic()))
        _close(connection)

    def held_tags(self) -> list[str]:
        """Delivery tags of the messages this worker holds, not acked yet: those its
        consumer's channel delivered, and those of the requests it is running or
        waiting to run (after a reconnect, the running ones came on an older channel
        that the consumer no longer has)."""
        tags: set[str] = set()
        consumer = getattr(self.worker, "consumer", None)
        task_consumer = getattr(consumer, "task_consumer", None)
        qos = getattr(getattr(task_consumer, "channel", None), "qos", None)
        delivered = getattr(qos, "_delivered", None)
        if delivered:
            dirty: set[str] = getattr(qos, "_dirty", set())
            for _ in range(10):
                try:  # the event loop's thread changes both while we copy
                    held, done = list(delivered), set(dirty)
                    tags.update(tag for tag in held if tag not in done)
                    break
                except RuntimeError:
                    continue
        from celery.worker import state

        for requests in (state.active_requests, state.reserved_requests):
            for _ in range(10):
                try:
                    held = list(requests)
                    break
                except RuntimeError:
                    continue
            else:
                held = []
            for request in held:
                message = getattr(request, "_message", None)
                tag = getattr(message, "delivery_tag", None)
                if tag is not None and not getattr(message, "acknowledged", False):
                    tags.add(str(tag))
        return sorted(tags)

    def keep_alive(self, channel: Any) -> int:
        """Refresh this worker's entries in ``unacked_index``; returns how many."""
        tags = self.held_tags()
        if tags:
            now = time.time()
            channel.client.zadd(channel.unacked_index_key, dict.fromkeys(tags, now), xx=True)
        return len(tags)

    def rescue(self, channel: Any) -> int:
        """Re-queue messages unacked for longer than the visibility timeout; returns
        how many (0 when another worker holds kombu's rescue mutex)."""
        from kombu.transport.redis import Mutex, MutexHeld

        qos = channel.qos
        ceiling = time.time() - self.visibility_timeout
        # Held briefly, and expiring soon: a rescuer killed while holding kombu's mutex
        # (300 s by default) would stop every worker's rescue for that long.
        expire = int(max(10, 5 * self.rescue_every))
        with channel.conn_or_acquire() as client:
            try:
                with Mutex(client, qos.unacked_mutex_key, expire):
                    tags = client.zrange(
                        qos.unacked_index_key, 0, ceiling, byscore=True, offset=0, num=RESCUE_BATCH
                    )
                    for tag in tags:
                        if self._stop.is_set():
                            break
                        qos.restore_by_tag(tag, client)
            except MutexHeld:
                return 0
        if tags:
            logger.warning(
                "celery_reliable: rescued %d message(s) unacknowledged for more than the "
                "visibility_timeout (%gs): the worker holding them stopped renewing them",
                len(tags),
                self.visibility_timeout,
            )
        return len(tags)


def _close(connection: Any) -> None:
    if connection is not None:
        try:
            connection.release()
        except Exception:  # already broken: nothing to release
            logger.debug("celery_reliable redelivery: closing the connection failed")


#: The worker's attribute holding its Redelivery, for ``stop_redelivery``.
_WORKER_ATTR = "_reliable_redelivery"


def redelivery_for(worker: Any, settings: ReliableSettings) -> Redelivery | None:
    """The worker's keepalive and rescue thread on a Redis broker, when either is on
    (not started; kept on the worker until :func:`stop_redelivery`)."""
    if not (settings.keepalive or settings.orphan_rescue):
        return None
    broker = BrokerFacts.of(worker.app)
    if not broker.is_redis or broker.visibility_timeout is None:
        return None
    redelivery = Redelivery(worker.app, worker, settings, broker.visibility_timeout)
    setattr(worker, _WORKER_ATTR, redelivery)
    return redelivery


def stop_redelivery(worker: Any) -> None:
    """At ``worker_shutdown`` (its pool finished) or a cold shutdown: stop keeping this
    worker's messages alive."""
    redelivery = getattr(worker, _WORKER_ATTR, None)
    if redelivery is not None:
        redelivery.stop()
        setattr(worker, _WORKER_ATTR, None)
