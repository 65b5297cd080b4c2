"""Every state a Redis result backend stores for one job, in the order it stored them.

Celery's Redis backend publishes each result it stores on a channel named like its key
(``celery-task-meta-<id>``: ``RedisBackend._set`` sets and publishes in one pipeline),
for ``get()`` to wait on. A test that subscribes before the job is published hears
every store, even one overwritten a millisecond later, where polling the key would
have to be lucky to see it. A state not stored is proven absent by the state stored
after it: the messages of one channel arrive in the order they were published.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from tests.support.waiting import wait_until

#: Celery's ``task_keyprefix`` for results (the channel is the key).
KEY_PREFIX = "celery-task-meta-"


@contextmanager
def stored_states(backend_url: str, task_id: str) -> Iterator[Callable[..., list[str]]]:
    """Subscribed to ``task_id``'s results before the block runs; yields ``until``:
    ``until(*last, timeout=30.0)`` reads the states stored (first to last) until one of
    ``last`` comes, and returns them all."""
    client = redis.Redis.from_url(backend_url)
    pubsub = client.pubsub()
    channel = f"{KEY_PREFIX}{task_id}"
    pubsub.subscribe(channel)
    seen: list[str] = []

    def received() -> list[str]:
        """The states published since the last look, added to ``seen``."""
        while (message := pubsub.get_message()) is not None:
            if message["type"] == "message":
                seen.append(str(json.loads(message["data"])["status"]))
        return seen

    # The subscription is active once the server confirms it: only then is the job sent.
    wait_until(
        lambda: (message := pubsub.get_message()) is not None and message["type"] == "subscribe",
        f"the subscription to {channel}",
    )

    def until(*last: str, timeout: float = 30.0) -> list[str]:
        wait_until(
            lambda: (states := received()) and states[-1] in last,
            f"a state in {last} stored",
            timeout=timeout,
            seen=lambda: seen,
        )
        return list(seen)

    try:
        yield until
    finally:
        pubsub.close()
        client.close()
