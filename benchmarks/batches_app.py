"""The app ``benchmarks.batches`` runs in a real ``celery worker`` and publishes from:
one member task, no-op but for the members made to end DISCARDED or FAILED, and the
batch's callback, which keeps the summary and the moment it ran in Redis.

``BENCH_BROKER``, ``BENCH_STORE`` (the store's URL), ``BENCH_STATSD_PORT``, and
``BENCH_WORK_MS``: each member's own work, a sleep of that many ms (default 0: a
no-op, where the batch's cost weighs most)."""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import redis
from celery import Celery

from celery_reliable import ReliableTask, discard_on

#: Member n ends DISCARDED when n % DISCARD_EVERY == 1, FAILED when n % FAIL_EVERY == 2
#: (both deterministic, so the summary's counts are known in advance).
DISCARD_EVERY = 200
FAIL_EVERY = 500
WORK_S = float(os.environ.get("BENCH_WORK_MS") or 0) / 1000

app = Celery("bench-batches", broker=os.environ["BENCH_BROKER"], set_as_current=False)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=4,
    reliable_database_url=os.environ["BENCH_STORE"],
    reliable_statsd_host="127.0.0.1",
    reliable_statsd_port=int(os.environ.get("BENCH_STATSD_PORT") or 8125),
    reliable_log_outcomes=False,  # Celery's own "succeeded" log line is off too (WARNING)
    reliable_sentry=False,
)


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(os.environ["BENCH_BROKER"])


class BadRow(Exception):
    pass


class Broken(Exception):
    """Not classified by any rule: the member ends FAILED."""


def expected_outcome(n: int) -> str:
    if n % DISCARD_EVERY == 1:
        return "discarded"
    if n % FAIL_EVERY == 2:
        return "failed"
    return "succeeded"


@app.task(base=ReliableTask, name="bench.member", timeout=30, shared=False)
@discard_on(BadRow)
def member(n: int) -> None:
    if WORK_S:
        time.sleep(WORK_S)
    outcome = expected_outcome(n)
    if outcome == "discarded":
        raise BadRow(f"row {n}")
    if outcome == "failed":
        raise Broken(f"row {n}")


@app.task(base=ReliableTask, name="bench.done", timeout=30, shared=False)
def done(summary: dict[str, Any], label: str) -> None:
    _client().rpush(f"done:{label}", json.dumps({"at": time.time(), "summary": summary}))
