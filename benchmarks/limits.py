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
each call timed on its own. On Redis the give back is written and not waited for (its
answer is read by the next one): ``give back`` is what the execution spends on it,
and ``until free`` the time until Redis's answer is read (the slot is free; timed in a
loop of its own, waiting for each); ``pair`` is take + give back, what the execution
spends. On the store the give back is synchronous: ``give back`` and ``until free``
time the same call. ``backend only`` calls the backend with the parts built once (its
synchronous give back), so the difference is the Python around the round trip.
``PING`` is one Redis round trip with nothing to do (redis-py's ``ping()``, the
client's pool and all): the floor of any Redis call from this client.

On Redis, whole executions too: the tracer a worker builds for a task
(``celery.app.trace.build_tracer``) called as a pool process calls it, back to back,
for the limited task, for the same task without limits, and for the limited one with
its give back synchronous: the difference is what a limit adds to an execution.

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

    @app.task(base=ReliableTask, name="bench.free", timeout=30, shared=False)
    def free(n: int) -> int:
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


def until_free(task: Any, executions: int, rounds: int) -> float:
    """Median µs from the give back's call until its answer is read (its slot is free
    in Redis), each waited for before the next take."""
    backend = slots.backend_for(task.app)
    settle = getattr(backend, "settle", None)
    take, give_back = execution_path(task)

    def given_and_answered(held: Any) -> None:
        give_back(held)
        if settle is not None:
            assert settle(5.0), "no answer to a give back within 5 s"

    return time_pairs(take, given_and_answered, executions, rounds)[1]


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


def tracer_of(task: Any) -> Callable[[], None]:
    """One execution as a pool process runs it (a new job id each time)."""
    from celery.app.trace import build_tracer

    trace = build_tracer(task.name, task, app=task.app, hostname="bench@host")
    numbers = iter(range(10**9))

    def once() -> None:
        job = f"job-{next(numbers)}"
        request = {
            "id": job,
            "task": task.name,
            "delivery_info": {"exchange": "", "routing_key": "celery", "priority": 0},
            "retries": 0,
        }
        trace(job, (1,), {}, request)

    return once


def time_executions(
    runs: dict[str, Callable[[], None]], executions: int, rounds: int
) -> dict[str, float]:
    """Median µs per execution of each, the variants alternating round by round."""
    for once in runs.values():
        for _ in range(min(executions, 500)):
            once()
    found: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, once in runs.items():
            gc.collect()
            began = time.perf_counter_ns()
            for _ in range(executions):
                once()
            found[name].append((time.perf_counter_ns() - began) / executions / 1000)
    return {name: statistics.median(times) for name, times in found.items()}


def executions_us(task: Any, executions: int, rounds: int) -> dict[str, float]:
    """The limited task, the same without limits, and with a synchronous give back."""
    backend: Any = slots.backend_for(task.app)
    limited = tracer_of(task)

    def give_back_now(token: str, at_ms: int, parts: Any, _: str) -> None:
        backend.give_back(token, at_ms, parts)

    def synchronous() -> None:
        backend.give_back_soon = give_back_now  # on this instance only
        try:
            limited()
        finally:
            del backend.give_back_soon

    times = time_executions(
        {
            "execution without limits": tracer_of(task.app.tasks["bench.free"]),
            "execution, limited": limited,
            "execution, limited, give back synchronous": synchronous,
        },
        executions,
        rounds,
    )
    assert backend.settle(5.0)
    return times


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
                row["give back, until free"] = until_free(task, args.executions, args.rounds)
                row["take (backend only)"], row["give back (backend only)"] = time_pairs(
                    *backend_only(task), args.executions, args.rounds
                )
                if db == "redis":
                    row["PING"] = ping_us(limits_url, args.executions, args.rounds)
                    row.update(executions_us(task, args.executions, args.rounds))
                slots.forget_backend(task.app)
                figures[db] = row
                console.print(f"{db}: " + ", ".join(f"{k} {v:.1f} µs" for k, v in row.items()))
    table = Table(
        title=f"one concurrency slot, µs per call (median of {args.rounds} x {args.executions})"
    )
    columns = (
        "backend",
        "take",
        "give back",
        "until free",
        "pair",
        "backend only: take",
        "give back",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "backend" else "right")
    for db, row in figures.items():
        table.add_row(
            db,
            f"{row['take']:.0f}",
            f"{row['give back']:.0f}",
            f"{row['give back, until free']:.0f}",
            f"{row['take'] + row['give back']:.0f}",
            f"{row['take (backend only)']:.0f}",
            f"{row['give back (backend only)']:.0f}",
        )
    console.print(table)
    if "redis" in figures:
        redis_row = figures["redis"]
        console.print(f"Redis PING from this client: {redis_row['PING']:.0f} µs")
        base = redis_row["execution without limits"]
        for name in ("execution, limited", "execution, limited, give back synchronous"):
            console.print(
                f"{name}: {redis_row[name]:.0f} µs, {redis_row[name] - base:+.0f} µs over the "
                f"same task without limits ({base:.0f} µs)"
            )
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
