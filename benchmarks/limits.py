"""What a global limit costs per execution: one slot taken and given back.

    python -m benchmarks.limits [--executions N] [--rounds R] [--db redis,sqlite,postgresql]

One process, one thread, a ``ReliableTask`` with ``limits=[concurrency(1000,
key="bench")]`` (never reached, as on a task whose limit is rarely hit), its slots in:

* ``redis``: a throw-away ``redis-server`` on loopback (one Lua script per take, one
  per give back: ``limits/redis_slots.py``);
* ``sqlite``: the SQL store (``reliable_limits_url = "store"``) on a SQLite file in the
  WAL mode the store sets;
* ``postgresql``: the same on a throw-away PostgreSQL server at its production defaults
  (fsync and synchronous commit on), as ``benchmarks.throughput`` starts it.

Each row times the execution's own calls (``limits.slots.take``, then
``Held.give_back``, as ``Execution`` makes them: the key, the token, the round trip),
each call timed on its own; ``backend only`` calls the backend with the parts built
once, so the difference is the Python around the round trip. ``PING`` is one Redis
round trip with nothing to do: the floor of any Redis call from this client.

Figures are µs per call: the median of R rounds, each the mean over N executions.
Progress and the table go to stderr, JSON to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery
from rich.console import Console
from rich.table import Table

from celery_reliable import ReliableTask
from celery_reliable.limits import concurrency, slots
from celery_reliable.limits.parts import Taken
from celery_reliable.store import migrate, store_for
from tests.support import servers

LIMIT = concurrency(1000, key="bench")


def make_task(database_url: str | None, limits_url: str) -> Any:
    app = Celery("bench-limits", broker="memory://", set_as_current=False)
    app.conf.update(
        reliable_database_url=database_url,
        reliable_limits_url=limits_url,
        reliable_log_outcomes=False,
        reliable_sentry=False,
    )

    @app.task(base=ReliableTask, name="bench.limited", timeout=30, limits=[LIMIT], shared=False)
    def limited(n: int) -> int:
        return n

    app.finalize()
    if database_url is not None:
        store = store_for(app)
        assert store is not None
        migrate.upgrade(store.engine)
    return app.tasks["bench.limited"]


def time_pairs(
    take: Callable[[int], Any], give_back: Callable[[Any], None], executions: int, rounds: int
) -> tuple[float, float]:
    """Median µs of one take and of one give back, each timed on its own."""
    for n in range(min(executions, 500)):  # warm: connections, scripts loaded, caches
        give_back(take(n))
    takes, gives = [], []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        gc.collect()
        took = gave = 0
        for n in range(executions):
            began = clock()
            held = take(n)
            between = clock()
            give_back(held)
            took += between - began
            gave += clock() - between
        takes.append(took / executions / 1000)
        gives.append(gave / executions / 1000)
    return statistics.median(takes), statistics.median(gives)


def execution_path(task: Any) -> tuple[Callable[[int], Any], Callable[[Any], None]]:
    def take(n: int) -> Any:
        held = slots.take(task, f"job-{n}", (n,), {}, 0)
        assert isinstance(held, slots.Held), held
        return held

    return take, lambda held: held.give_back()


def backend_only(task: Any) -> tuple[Callable[[int], Any], Callable[[Any], None]]:
    backend = slots.backend_for(task.app)
    parts = task._reliable_slots.parts((1,), {})
    jobs = [f"job-{n}" for n in range(100_000)]

    def take(n: int) -> tuple[str, int]:
        token = f"{jobs[n % 100_000]}:t{n}"
        got = backend.take(jobs[n % 100_000], 0, token, parts)
        assert isinstance(got, Taken), got
        return token, got.at_ms

    def give_back(held: tuple[str, int]) -> None:
        backend.give_back(held[0], held[1], parts)

    return take, give_back


def ping_us(url: str, executions: int, rounds: int) -> float:
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(200):
        client.ping()
    results = []
    for _ in range(rounds):
        began = time.perf_counter_ns()
        for _ in range(executions):
            client.ping()
        results.append((time.perf_counter_ns() - began) / executions / 1000)
    client.close()
    return statistics.median(results)


@contextlib.contextmanager
def where(db: str, folder: str) -> Iterator[tuple[str | None, str]]:
    """(reliable_database_url, reliable_limits_url) of one backend, its server running."""
    if db == "redis":
        with servers.redis_server() as url:
            yield None, f"{url}/0"
    elif db == "sqlite":
        yield f"sqlite:///{folder}/limits.sqlite3", "store"
    elif db == "postgresql":
        with servers.postgres_server(durable=True) as url:
            yield url, "store"
    else:
        raise SystemExit(f"unknown --db {db!r}: redis, sqlite, postgresql")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--db", default="redis,sqlite,postgresql")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-limits-") as folder:
        for db in args.db.split(","):
            with where(db, folder) as (database_url, limits_url):
                task = make_task(database_url, limits_url)
                row: dict[str, float] = {}
                row["take"], row["give back"] = time_pairs(
                    *execution_path(task), args.executions, args.rounds
                )
                row["take (backend only)"], row["give back (backend only)"] = time_pairs(
                    *backend_only(task), args.executions, args.rounds
                )
                if db == "redis":
                    row["PING"] = ping_us(limits_url, args.executions, args.rounds)
                slots.forget_backend(task.app)
                figures[db] = row
                console.print(f"{db}: " + ", ".join(f"{k} {v:.1f} µs" for k, v in row.items()))
    table = Table(
        title=f"one concurrency slot, µs per call (median of {args.rounds} x {args.executions})"
    )
    for column in ("backend", "take", "give back", "pair", "backend only: take", "give back"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    for db, row in figures.items():
        table.add_row(
            db,
            f"{row['take']:.0f}",
            f"{row['give back']:.0f}",
            f"{row['take'] + row['give back']:.0f}",
            f"{row['take (backend only)']:.0f}",
            f"{row['give back (backend only)']:.0f}",
        )
    console.print(table)
    if "redis" in figures:
        console.print(f"Redis PING from this client: {figures['redis']['PING']:.0f} µs")
    result = {
        "executions": args.executions,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "us_per_call": figures,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
