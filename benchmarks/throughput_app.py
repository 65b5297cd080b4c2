"""The app ``benchmarks.throughput`` runs in a real ``celery worker``: one no-op task,
as plain Celery or as a ReliableTask, by ``BENCH_VARIANT``."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any

from celery import Celery

from celery_reliable import ReliableTask
from celery_reliable.limits import concurrency

VARIANT, _, FETCH = os.environ["BENCH_VARIANT"].partition("-")
#: "-kombu": kombu's BRPOP fetch for a ReliableTask (reliable_atomic_fetch off);
#: "-atomic": the atomic fetch for plain Celery (broker_transport set by hand). The
#: others take the default: plain Celery kombu's, a ReliableTask the atomic fetch.
#: "limited-sync", "limited-thread": the atomic fetch, and another way of giving back.

app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    reliable_database_url=os.environ.get("BENCH_STORE") or None,
    reliable_statsd_host="127.0.0.1",
    reliable_statsd_port=int(os.environ["BENCH_STATSD_PORT"]),
    reliable_history=VARIANT == "history",
    reliable_log_outcomes=False,  # Celery's own "succeeded" log line is off too (WARNING)
    reliable_atomic_fetch=FETCH != "kombu",
)
if FETCH == "atomic":
    import celery_reliable.delivery.atomic_fetch  # noqa: F401  (registers the transport's name)

    app.conf.broker_transport = "reliable-redis"

if VARIANT == "plain":

    @app.task(name="bench.noop")
    def noop(n: int) -> None:
        return None

elif VARIANT in ("sqlite", "postgresql"):

    @app.task(
        base=ReliableTask,
        name="bench.noop",
        timeout=30,
        idempotency_key="noop:{run}:{n}",
        waive={"classified": "benchmark"},
    )
    def noop(n: int, run: str = "") -> None:  # type: ignore[misc]
        return None

elif VARIANT == "limited":
    # Other ways of giving back, for comparison (benchmark only): "limited-sync", the
    # execution waits for the round trip; "limited-thread", a thread of the pool process
    # makes it (a queue and a daemon thread, started with the first give back).
    from celery_reliable.limits.redis_slots import RedisSlots

    def give_back_now(self: RedisSlots, token: str, at_ms: int, parts: Any, _: str) -> None:
        self.give_back(token, at_ms, parts)

    pending: queue.SimpleQueue[tuple[RedisSlots, str, int, Any]] = queue.SimpleQueue()
    started: list[threading.Thread] = []

    def give_backs() -> None:
        while True:
            slots, token, at_ms, parts = pending.get()
            slots.give_back(token, at_ms, parts)

    def give_back_on_a_thread(self: RedisSlots, token: str, at_ms: int, parts: Any, _: str) -> None:
        if not started:
            started.append(threading.Thread(target=give_backs, daemon=True))
            started[0].start()
        pending.put((self, token, at_ms, parts))

    if FETCH == "sync":
        RedisSlots.give_back_soon = give_back_now  # type: ignore[method-assign]
    elif FETCH == "thread":
        RedisSlots.give_back_soon = give_back_on_a_thread  # type: ignore[method-assign]

    # A limit that is never reached: what taking and giving back a slot costs (in the
    # broker's Redis, the default place of limits).
    @app.task(
        base=ReliableTask, name="bench.noop", timeout=30, limits=[concurrency(1000, key="bench")]
    )
    def noop(n: int) -> None:  # type: ignore[misc]
        return None

elif VARIANT == "heartbeat":

    @app.task(base=ReliableTask, name="bench.noop", bind=True, timeout=30, heartbeat_timeout=10)
    def noop(self: ReliableTask, n: int) -> None:  # type: ignore[misc]
        self.heartbeat()

else:

    @app.task(base=ReliableTask, name="bench.noop", timeout=30)
    def noop(n: int) -> None:  # type: ignore[misc]
        return None
