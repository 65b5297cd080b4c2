"""Throughput of a real prefork worker, ReliableTask against plain Celery.

    python -m benchmarks.throughput [--jobs N] [--rounds R] [--variants a,b,...]

One no-op task on one ``celery worker -P prefork -c 2`` and a real Redis broker:
``plain`` (``celery.Task``); ``reliable`` (ReliableTask, StatsD on, no store);
``sqlite`` and ``postgresql`` (ReliableTask with an idempotency key per job: a claim
and a completion per execution, PostgreSQL at its production defaults, fsync and
synchronous commit on); ``history`` (ReliableTask, the outcome history on, SQLite);
``heartbeat`` (ReliableTask with ``heartbeat_timeout``, one beat per execution);
``limited`` (ReliableTask with ``limits=[concurrency(1000, key="bench")]``, a limit
never reached, in the broker's Redis: a slot taken and given back per execution,
compared with ``reliable``, the same task without limits; its give back is written
and its answer read later); ``limited-thread`` (the same, its give back made by a
thread of the pool process, the design measured against it); ``limited-sync`` (the
same, the execution waiting for its give back's round trip).
A ReliableTask's worker fetches atomically (one Lua script per message, instead of
kombu's BRPOP and a second round trip to record it): ``-kombu`` variants turn that
off, and ``plain-atomic`` gives it to plain Celery, so that the table can show the
task's own cost (ratio to plain on the same fetch) apart from the fetch's gain.
All variants share Celery's options (``acks_late``, prefetch 4, no results) and send
StatsD to a local socket.

Each run publishes N jobs with no worker running, starts the worker, and times from
the first message taken to the queue and the unacknowledged set both empty. The
variants run alternately, R rounds (``--rotate``: each round starts one variant
further on, so that none always runs right after the same one); the table gives the
median jobs per second and the ratio to ``plain`` from the same run. A variant
measured against ``reliable`` is also given as the median of each round's own ratio
(rounds next to each other in time share the machine's load). JSON goes to
``.cache/bench-throughput.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
from rich.console import Console
from rich.table import Table

from tests.support import servers
from tests.support.workers import celery_worker

VARIANTS = (
    "plain",
    "plain-atomic",
    "reliable",
    "reliable-kombu",
    "sqlite",
    "sqlite-kombu",
    "postgresql",
    "postgresql-kombu",
    "history",
    "heartbeat",
    "limited",
    "limited-thread",
    "limited-sync",
)


def fetch_of(variant: str) -> str:
    """Which fetch a variant's worker uses: kombu's BRPOP or the atomic fetch."""
    if variant == "plain" or variant.endswith("-kombu"):
        return "kombu"
    return "atomic"


def baseline_of(variant: str) -> str:
    """Plain Celery on the same fetch: the ratio that is the task's own cost."""
    return "plain" if fetch_of(variant) == "kombu" else "plain-atomic"


ROOT = Path(__file__).resolve().parent.parent


def publish(broker: str, jobs: int, run: str, variant: str) -> None:
    from celery import Celery

    client = Celery("bench-client", broker=broker, set_as_current=False)
    kwargs = {"run": run} if variant.partition("-")[0] in ("sqlite", "postgresql") else {}
    with client.producer_or_acquire() as producer:
        for n in range(jobs):
            client.send_task("bench.noop", (n,), kwargs, producer=producer, ignore_result=True)


def drained(client: redis.Redis) -> bool:
    return client.llen("celery") == 0 and client.zcard("unacked_index") == 0


def one_run(variant: str, broker: str, store: str | None, statsd_port: int, jobs: int) -> float:
    """Jobs per second for one worker run of ``variant``."""
    client = redis.Redis.from_url(broker)
    client.flushdb()
    publish(broker, jobs, uuid.uuid4().hex, variant)
    assert client.llen("celery") == jobs
    env = {
        "BENCH_VARIANT": variant,
        "BENCH_BROKER": broker,
        "BENCH_STORE": store or "",
        "BENCH_STATSD_PORT": str(statsd_port),
    }
    with celery_worker("benchmarks.throughput_app", env, concurrency=2, loglevel="WARNING"):
        started = finished = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            now = time.perf_counter()
            if started is None and client.llen("celery") < jobs:
                started = now
            if started is not None and drained(client):
                finished = now
                break
            time.sleep(0.002)
    if started is None or finished is None:
        raise RuntimeError(f"{variant}: the worker did not drain {jobs} jobs in 300 s")
    return jobs / (finished - started)


@contextlib.contextmanager
def stores(variants: list[str], folder: Path) -> Iterator[dict[str, str | None]]:
    found: dict[str, str | None] = {
        "plain": None,
        "reliable": None,
        "heartbeat": None,
        "limited": None,
    }
    found["sqlite"] = f"sqlite:///{folder}/receipts.sqlite3"
    found["history"] = f"sqlite:///{folder}/history.sqlite3"
    with contextlib.ExitStack() as stack:
        if "postgresql" in variants:
            found["postgresql"] = stack.enter_context(servers.postgres_server(durable=True))
        yield found


def prepare(url: str | None) -> None:
    """Apply the store's migrations before timing (a PostgreSQL store needs it)."""
    if url is None:
        return
    from celery_reliable.store import migrate
    from celery_reliable.store.engine import create_store_engine

    engine = create_store_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rotate", action="store_true", help="rotate the order each round")
    args = parser.parse_args()
    variants = args.variants.split(",")
    console = Console(stderr=True)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # StatsD lines land here, unread
    folder = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    figures: dict[str, list[float]] = {v: [] for v in variants}
    with servers.redis_server() as redis_url, stores(variants, folder) as urls:
        broker = f"{redis_url}/0"
        for variant in variants:
            prepare(urls.get(variant.partition("-")[0]))
        for round_ in range(1, args.rounds + 1):
            turn = (round_ - 1) % len(variants) if args.rotate else 0
            for variant in variants[turn:] + variants[:turn]:
                store = urls.get(variant.partition("-")[0])
                rate = one_run(variant, broker, store, sink.getsockname()[1], args.jobs)
                figures[variant].append(rate)
                console.print(f"round {round_}: {variant:<10} {rate:8.0f} jobs/s")
    medians = {v: statistics.median(r) for v, r in figures.items()}
    base = medians.get("plain")
    table = Table(title=f"{args.jobs} no-op jobs, prefork -c 2, Redis; median of {args.rounds}")
    columns = ("variant", "fetch", "jobs/s", "ratio to plain", "ratio to plain, same fetch")
    for column in (*columns, "rounds (jobs/s)"):
        table.add_column(column, justify="left" if column in ("variant", "fetch") else "right")
    same_fetch: dict[str, float] = {}
    for variant in variants:
        ratio = f"{medians[variant] / base:.2f}" if base else "-"
        like = medians.get(baseline_of(variant))
        if like:
            same_fetch[variant] = medians[variant] / like
        rounds = " ".join(f"{r:.0f}" for r in figures[variant])
        table.add_row(
            variant,
            fetch_of(variant),
            f"{medians[variant]:.0f}",
            ratio,
            f"{same_fetch[variant]:.2f}" if variant in same_fetch else "-",
            rounds,
        )
    console.print(table)
    against_reliable = {
        v: medians[v] / medians["reliable"]
        for v in ("limited", "limited-thread", "limited-sync", "heartbeat")
        if v in medians and medians.get("reliable")
    }
    per_round = {
        v: statistics.median(a / b for a, b in zip(figures[v], figures["reliable"], strict=True))
        for v in against_reliable
    }
    for variant, ratio in against_reliable.items():
        console.print(
            f"{variant} / reliable (the same task without it): {ratio:.2f} "
            f"(median of the rounds' own ratios: {per_round[variant]:.2f})"
        )
    result = {
        "jobs": args.jobs,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "jobs_per_second": figures,
        "median": medians,
        "ratio_to_plain": {v: medians[v] / base for v in variants} if base else {},
        "ratio_to_plain_same_fetch": same_fetch,
        "ratio_to_reliable": against_reliable,
        "ratio_to_reliable_per_round": per_round,
        "rotated": args.rotate,
    }
    out = ROOT / ".cache" / "bench-throughput.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
