"""What the transactional outbox costs per message, and how long a message waits in it.

    python -m benchmarks.outbox [--messages N] [--rounds R] [--latency M] [--db sqlite,postgresql]

A real Redis broker (a throw-away ``redis-server`` on loopback), one ``ReliableTask``,
and the outbox in the store: a SQLite file (in the WAL mode the store sets) or a
throw-away PostgreSQL server at its production defaults (fsync and synchronous commit
on, as ``benchmarks.throughput`` starts it). The application writes through an engine
of its own on the same database, with a SQLAlchemy ``Session``, as docs/enqueue.md
shows.

**Cost per message**, in the publishing process, no relay running (the outbox is
emptied between rounds), each variant timed over N messages, one transaction each:

* ``apply_async``: the task's ``apply_async`` to Redis (no transaction);
* ``publish_in + commit``: ``publish_in(session, task.s(n))`` in a transaction of its
  own, committed;
* ``row + commit``: one row of the application's own table inserted and committed
  (what a transaction that publishes costs anyway);
* ``row + publish_in + commit``: the same transaction with ``publish_in`` beside the
  row; minus ``row + commit``, what the outbox adds to a transaction the application
  commits anyway.

**Latency, commit to publish**: one relay (``RelayThread``, as a worker runs it) at
the default ``reliable_outbox_poll_interval`` (0.2 s); a writer commits M messages one
transaction each, at random intervals (uniform, mean 25 ms); a thread reading the
queue's Redis list (BRPOP) stamps each message's arrival. The latency is from the
moment the writer's ``commit()`` returned to the message's arrival in Redis, on the
same monotonic clock. PostgreSQL wakes the relay by LISTEN/NOTIFY at the commit;
SQLite has no notification, so the relay polls every 0.2 s (a read that takes no
lock), and a message waits half the interval on average.

Figures: µs per message, the median of R rounds, each the mean over N messages;
latencies in ms, median and p99 over M messages. Progress and the tables go to stderr,
JSON to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from celery_reliable import ReliableTask
from celery_reliable.config import settings_for
from celery_reliable.outbox import publish_in
from celery_reliable.outbox.relay import RelayThread
from celery_reliable.store import Store, migrate, store_for
from celery_reliable.store.schema import outbox
from tests.support import servers

QUEUE = "celery"

# The application's own table, written in the same transaction as the message.
app_metadata = sa.MetaData()
orders = sa.Table(
    "bench_outbox_orders",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("note", sa.String(64), nullable=False),
)


class Bench:
    """The app, its task, its store, and the application's own engine."""

    def __init__(self, broker_url: str, database_url: str) -> None:
        app = Celery("bench-outbox", broker=broker_url, set_as_current=False)
        app.conf.update(
            reliable_database_url=database_url,
            reliable_log_outcomes=False,
            reliable_sentry=False,
            task_default_queue=QUEUE,
        )

        @app.task(base=ReliableTask, name="bench.ship", timeout=30, shared=False)
        def ship(n: int) -> int:
            return n

        app.finalize()
        self.app = app
        self.task: Any = ship
        store = store_for(app)
        assert store is not None
        migrate.upgrade(store.engine)
        self.store: Store = store
        self.engine = sa.create_engine(database_url)
        app_metadata.create_all(self.engine)
        self.redis = redis.Redis.from_url(broker_url)

    def empty(self) -> None:
        """The outbox, the application's table and the queue emptied."""
        with self.engine.begin() as connection:
            connection.execute(sa.delete(outbox))
            connection.execute(sa.delete(orders))
        self.redis.delete(QUEUE)

    def close(self) -> None:
        self.redis.close()
        self.engine.dispose()
        self.store.engine.dispose()


# ------------------------------------------------------------------------ cost


def variants(bench: Bench) -> dict[str, Callable[[int], None]]:
    task, engine = bench.task, bench.engine

    def apply_async(n: int) -> None:
        task.apply_async((n,))

    def publish_commit(n: int) -> None:
        with Session(engine) as session, session.begin():
            publish_in(session, task.s(n))

    def row_commit(n: int) -> None:
        with Session(engine) as session, session.begin():
            session.execute(sa.insert(orders), {"note": f"order {n}"})

    def row_publish_commit(n: int) -> None:
        with Session(engine) as session, session.begin():
            session.execute(sa.insert(orders), {"note": f"order {n}"})
            publish_in(session, task.s(n))

    return {
        "apply_async": apply_async,
        "publish_in + commit": publish_commit,
        "row + commit": row_commit,
        "row + publish_in + commit": row_publish_commit,
    }


def cost_us(bench: Bench, messages: int, rounds: int) -> dict[str, float]:
    """Median µs per message of each variant, the variants alternating round by round."""
    runs = variants(bench)
    for once in runs.values():  # warm: connections, the schema check, caches
        for n in range(min(messages, 200)):
            once(n)
    bench.empty()
    found: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, once in runs.items():
            gc.collect()
            began = time.perf_counter_ns()
            for n in range(messages):
                once(n)
            found[name].append((time.perf_counter_ns() - began) / messages / 1000)
            bench.empty()
    return {name: statistics.median(times) for name, times in found.items()}


# --------------------------------------------------------------------- latency


class Arrivals:
    """Reads the queue's Redis list and stamps each message by its task id."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.at: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-arrivals", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            got = self.client.brpop([QUEUE], timeout=0.2)
            if got is None:
                continue
            arrived = time.monotonic()
            task_id = json.loads(got[1])["headers"]["id"]
            self.at[task_id] = arrived

    def __enter__(self) -> Arrivals:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def latency_ms(bench: Bench, messages: int) -> dict[str, Any]:
    """Commit-to-publish latency of ``messages`` messages through one relay thread."""
    bench.empty()
    interval = settings_for(bench.app).outbox_poll_interval
    relay = RelayThread(bench.app, bench.store, interval)
    committed: dict[str, float] = {}
    rng = random.Random(21)
    with Arrivals(str(bench.app.conf.broker_url)) as arrivals:
        relay.start()
        try:
            time.sleep(0.5)  # the relay's first look (and LISTEN) done
            waker = relay.relay._waker
            listens = bool(waker is not None and waker.listens)
            for n in range(messages):
                time.sleep(rng.uniform(0, 0.05))
                with Session(bench.engine) as session, session.begin():
                    task_id = publish_in(session, bench.task.s(n)).id
                committed[task_id] = time.monotonic()
            deadline = time.monotonic() + 30
            while len(arrivals.at) < messages and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            relay.stop()
    missing = set(committed) - set(arrivals.at)
    if missing:
        raise SystemExit(f"{len(missing)} of {messages} messages did not arrive within 30 s")
    waits = sorted((arrivals.at[t] - committed[t]) * 1000 for t in committed)
    return {
        "wakes_by": "LISTEN/NOTIFY" if listens else f"polling every {interval:g} s",
        "poll_interval_s": interval,
        "messages": messages,
        "median_ms": statistics.median(waits),
        "p99_ms": waits[min(len(waits) - 1, round(0.99 * (len(waits) - 1)))],
        "max_ms": waits[-1],
    }


# ------------------------------------------------------------------------ main


@contextlib.contextmanager
def database(db: str, folder: str) -> Iterator[str]:
    if db == "sqlite":
        yield f"sqlite:///{folder}/outbox.sqlite3"
    elif db == "postgresql":
        with servers.postgres_server(durable=True) as url:
            yield url
    else:
        raise SystemExit(f"unknown --db {db!r}: sqlite, postgresql")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency", type=int, default=500, help="messages timed for latency")
    parser.add_argument("--db", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    costs: dict[str, dict[str, float]] = {}
    latencies: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-outbox-") as folder,
        servers.redis_server() as broker,
    ):
        for db in args.db.split(","):
            with database(db, folder) as url:
                bench = Bench(f"{broker}/0", url)
                try:
                    costs[db] = cost_us(bench, args.messages, args.rounds)
                    console.print(
                        f"{db}: " + ", ".join(f"{k} {v:.0f} µs" for k, v in costs[db].items())
                    )
                    latencies[db] = latency_ms(bench, args.latency)
                    console.print(f"{db}: latency {latencies[db]}")
                finally:
                    bench.close()
    table = Table(
        title=f"outbox cost, µs per message (median of {args.rounds} x {args.messages}), "
        "Redis broker"
    )
    for column in (
        "store",
        "apply_async",
        "publish_in + commit",
        "ratio",
        "row + commit",
        "row + publish_in + commit",
        "added by publish_in",
    ):
        table.add_column(column, justify="left" if column == "store" else "right")
    for db, row in costs.items():
        plain, outboxed = row["apply_async"], row["publish_in + commit"]
        added = row["row + publish_in + commit"] - row["row + commit"]
        table.add_row(
            db,
            f"{plain:.0f}",
            f"{outboxed:.0f}",
            f"{outboxed / plain:.1f}x",
            f"{row['row + commit']:.0f}",
            f"{row['row + publish_in + commit']:.0f}",
            f"{added:+.0f}",
        )
    console.print(table)
    table = Table(title=f"relay latency, commit to the message in Redis ({args.latency} messages)")
    for column in ("store", "relay wakes by", "median", "p99", "max"):
        table.add_column(
            column, justify="left" if column in ("store", "relay wakes by") else "right"
        )
    for db, found in latencies.items():
        table.add_row(
            db,
            found["wakes_by"],
            f"{found['median_ms']:.1f} ms",
            f"{found['p99_ms']:.1f} ms",
            f"{found['max_ms']:.1f} ms",
        )
    console.print(table)
    result = {
        "messages": args.messages,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "us_per_message": costs,
        "latency": latencies,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
