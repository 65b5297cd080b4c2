"""Queue depths: how many messages wait in a queue, as the broker answers it.

Read by the worker's sampler (``worker/sampler.py``, for the StatsD gauge) and by the
web view's overview (``read_depths``).
"""

from __future__ import annotations

import contextlib
from typing import Any


def read_depths(app: Any, queues: list[str]) -> list[tuple[str, int]]:
    """Each queue's depth now, on a connection of its own that gives up after one
    retry (the web view asks while a page waits)."""
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2)
        return [(queue, depth_of(connection, queue)) for queue in queues]


def depth_of(connection: Any, queue: str) -> int:
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
