"""Queue depths: how many messages wait in each queue a worker consumes.

Sampled by the worker every ``reliable_queue_depth_interval`` seconds, in a thread of
its own, and handed to whoever publishes them (the StatsD observer's gauge today). No
metrics library is imported here: a worker without StatsD configured never builds one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

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
    ) -> None:
        self.app = app
        self.queues = queues
        self.interval = interval
        self.emit = emit
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
            self._stop.wait(self.interval)

    def sample(self) -> list[tuple[str, int]]:
        depths = []
        with self.app.connection_for_read() as connection:
            for queue in self.queues:
                depths.append((queue, _depth(connection, queue)))
        return depths


def read_depths(app: Any, queues: list[str]) -> list[tuple[str, int]]:
    """Each queue's depth now, on a connection of its own that gives up after one
    retry (the web view asks while a page waits)."""
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2)
        return [(queue, _depth(connection, queue)) for queue in queues]


def _depth(connection: Any, queue: str) -> int:
    """Messages waiting in ``queue``: a passive declare, as AMQP brokers answer it and
    kombu's Redis transport emulates it (priority sub-queues included)."""
    from kombu.exceptions import ChannelError

    not_found = (ChannelError, *connection.channel_errors)
    channel = connection.channel()
    try:
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
        return int(count)
    except not_found:
        # Redis has no key for an empty queue, AMQP no queue that was never declared.
        return 0
    finally:
        with contextlib.suppress(Exception):  # a broker that closed it already
            channel.close()
