"""What the relays do, seen from outside the product: the ``outbox`` mode's witness, in a
Redis of its own that no fault touches (as ``at_once.py`` is the ``limits`` mode's).

Every process that relays (a worker's relay thread, ``celery reliable relay``) loads
the chaos app, which installs :func:`install` there: each publish of an outbox
message, once the broker took it, is counted by task id (``published``). A task id
counted twice is a real double publish: a relay died between its publish and its
delete, and the next relay published the row again.

Such a kill is aimed, so that every run has some: the run sets ``aim``; the relay that
publishes next takes it (``GETDEL``: one relay), writes its process group and the task
id in ``held`` and sleeps, still inside its batch's transaction (the row published, not
deleted), until the run SIGKILLs that process group (:func:`aim`). A relay the run
never kills carries on after ``HOLD_S``. While it sleeps, the other relays wait: it
holds the outbox's head.

The chaos job's executions count their outcomes here too (``outcomes``): the second
copy of a double publish ends DUPLICATE (or SNOOZED while the first runs).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import redis

AIM = "outbox:aim"
HELD = "outbox:held"
PUBLISHED = "outbox:published"
OUTCOMES = "outbox:outcomes"

#: The longest an aimed relay waits for its SIGKILL (s).
HOLD_S = 5.0


def install(url: str) -> None:
    """Count every outbox publish of this process, and hold the aimed one."""
    from celery_reliable.outbox import message

    client = redis.Redis.from_url(url, socket_timeout=5)
    publish = message.OutboxMessage.publish

    def witnessed(self: Any, producer: Any, queues: Any) -> None:
        publish(self, producer, queues)  # the broker has it; the row is not deleted yet
        client.hincrby(PUBLISHED, self.task_id, 1)
        if client.getdel(AIM) is not None:
            client.set(HELD, f"{os.getpgid(0)}:{self.task_id}")
            time.sleep(HOLD_S)  # the run's SIGKILL comes here

    message.OutboxMessage.publish = witnessed  # type: ignore[method-assign]


class OutcomeCounter:
    """The executions' side: each outcome counted (a client per process: a pool child
    connects after its fork)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: redis.Redis[bytes] | None = None
        self._pid = 0

    def count(self, outcome: str) -> None:
        if self._client is None or self._pid != os.getpid():
            self._client, self._pid = redis.Redis.from_url(self.url, socket_timeout=5), os.getpid()
        self._client.hincrby(OUTCOMES, outcome, 1)


def aim(url: str, within: float) -> tuple[int, str] | None:
    """Ask the next relay that publishes to stop between its publish and its delete;
    its process group and the task id it published, once it is there, or None when no
    relay published for ``within`` seconds (no row was waiting)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.delete(HELD)
        client.set(AIM, 1)
        until, taken = time.monotonic() + within, False
        while True:
            held = client.get(HELD)
            if held is not None:
                pgid, task_id = held.decode().split(":", 1)
                return int(pgid), task_id
            if time.monotonic() > until:
                if taken or client.delete(AIM):
                    return None  # nobody took it (or its taker died before saying so)
                taken, until = True, time.monotonic() + 2.0  # its holder writes HELD next
            time.sleep(0.005)
    finally:
        client.close()


@dataclass(frozen=True)
class Seen:
    """What the witness saw over a run."""

    publishes: int
    #: Task ids the relays published more than once, and the extra publishes.
    published_twice: int
    extra_publishes: int
    outcomes: dict[str, int]


def read(url: str) -> Seen:
    client = redis.Redis.from_url(url)
    try:
        counts = [int(n) for n in client.hvals(PUBLISHED)]
        outcomes = {k.decode(): int(v) for k, v in client.hgetall(OUTCOMES).items()}
        return Seen(
            publishes=sum(counts),
            published_twice=sum(1 for n in counts if n > 1),
            extra_publishes=sum(n - 1 for n in counts if n > 1),
            outcomes=dict(sorted(outcomes.items())),
        )
    finally:
        client.close()
