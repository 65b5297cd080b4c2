"""Where a crash test's task stops to be SIGKILLed (shared by the SQLAlchemy and the
Django crash apps)."""

from __future__ import annotations

import os
import time

import redis


def started_key(order_id: str) -> str:
    return f"crash:started:{order_id}"


def started(client: redis.Redis, order_id: str) -> bool:
    """Record an execution of the job; True for its first."""
    client.rpush(started_key(order_id), os.getpid())
    return bool(client.set(f"crash:first:{order_id}", 1, nx=True))


def wait_for_the_kill(client: redis.Redis, order_id: str, here: bool) -> None:
    """At the chosen point: tell the test this process is ready to be SIGKILLed, and
    wait for it."""
    if here:
        client.set(f"crash:ready:{order_id}", os.getpid())
        time.sleep(30)  # stands here until the test SIGKILLs this process
