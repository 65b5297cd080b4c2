"""A 10,000-member batch against the same 10,000 tasks without a batch, on SQLite and
PostgreSQL.

    python -m benchmarks.batches [--members N] [--rounds R] [--db sqlite,postgresql]
                                 [--work-ms MS]

A real Redis broker (a throw-away ``redis-server``), a store in a SQLite file (WAL, as
the store sets it) or a throw-away PostgreSQL server at its production defaults (fsync
and synchronous commit on), and one ``celery worker -P prefork -c 2``
(``benchmarks/batches_app.py``). The member task is a no-op ``ReliableTask`` without
an idempotency key (so that the batch's own cost is all there is to see), except that
one member in 200 ends DISCARDED and one in 500 FAILED, in both runs alike.
``--work-ms``: each member sleeps that long first (its own work; default 0).

Each round runs both ways, in turn (each round starts with the other one):

* **no batch**: N ``member.delay(n)`` calls, timed; then the worker is started and
  timed from the first message taken to the queue and the unacknowledged set both
  empty (as ``benchmarks.throughput`` does);
* **batch**: the same N calls inside ``with Batch(on_complete=done.s(label)):``, timed
  with the block's exit (the seal: a row per member); then the worker, timed the same
  way, and the callback waited for.

Then, for the batch: the callback ran once (counted once the worker stopped: its
queue and the outbox empty, nothing left to run it again), its summary's counts are
the ones the member task was made to end with, and the time from the last member's
end (``ended_at`` of the members' rows, the ending's own clock) to the
callback's body starting (the last ending completes the batch and writes the
callback's message to the outbox in its own transaction; a relay publishes it).

Figures: publish ms and members/s, the median of R rounds; ratios from the same run
(publish: batch / no batch, time; execution: no-batch time / batch time, i.e. the
batch's throughput as a share of the plain one, target >= 0.9). Progress and tables go
to stderr; JSON to stdout and ``.cache/bench-batches.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
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
from datetime import timezone
from pathlib import Path
from typing import Any

import redis
from rich.console import Console
from rich.table import Table

from tests.support import servers
from tests.support.workers import celery_worker

ROOT = Path(__file__).resolve().parent.parent
QUEUE = "celery"
APP = "benchmarks.batches_app"


def drained(client: redis.Redis) -> bool:
    return client.llen(QUEUE) == 0 and client.zcard("unacked_index") == 0


class Bench:
    """The app as the publishing process sees it (the worker's module, imported here
    with the run's environment)."""

    def __init__(self, broker: str, store: str, statsd_port: int, work_ms: float) -> None:
        self.env = {
            "BENCH_WORK_MS": str(work_ms),
            "BENCH_BROKER": broker,
            "BENCH_STORE": store,
            "BENCH_STATSD_PORT": str(statsd_port),
        }
        os.environ.update(self.env)
        import importlib

        name = "benchmarks.batches_app"
        # This store's app (one per --db): the module reads the environment.
        self.module = (
            importlib.reload(sys.modules[name])
            if name in sys.modules
            else importlib.import_module(name)
        )
        from celery_reliable.store import migrate, store_for

        found = store_for(self.module.app)
        assert found is not None
        migrate.upgrade(found.engine)
        self.store = found
        self.redis = redis.Redis.from_url(broker)
        self.seal_s: float | None = None

    def publish(self, members: int, batched: bool, label: str) -> tuple[float, str | None]:
        """Seconds to publish ``members`` tasks (and the batch id); ``seal_s``: of which
        the block's exit."""
        from celery_reliable import Batch

        member, done = self.module.member, self.module.done
        gc.collect()
        began = time.perf_counter()
        sealing = began
        if batched:
            with Batch(on_complete=done.s(label), app=self.module.app, description=label) as b:
                for n in range(members):
                    member.delay(n)
                sealing = time.perf_counter()
            batch_id: str | None = b.id
        else:
            for n in range(members):
                member.delay(n)
            batch_id = None
        ended = time.perf_counter()
        self.seal_s = ended - sealing if batched else None
        return ended - began, batch_id

    def execute(self, members: int, label: str, batched: bool) -> dict[str, Any]:
        """Start a worker on the published members; seconds from the first message
        taken to the queue and the unacknowledged set empty; with a batch, the
        callback's record once it ran (the worker stopped after it)."""
        client = self.redis
        assert client.llen(QUEUE) == members
        with celery_worker(APP, self.env, concurrency=2, loglevel="WARNING") as worker:
            started = finished = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                now = time.perf_counter()
                if started is None and client.llen(QUEUE) < members:
                    started = now
                if started is not None and drained(client):
                    finished = now
                    break
                time.sleep(0.002)
            if started is None or finished is None:
                raise RuntimeError(
                    f"{label}: the worker did not drain {members} jobs:\n" + worker.output[-3000:]
                )
            if batched:
                deadline = time.monotonic() + 60
                while client.llen(f"done:{label}") == 0:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"{label}: no callback within 60 s:\n" + worker.output[-3000:]
                        )
                    time.sleep(0.01)
        # The worker stopped (a warm shutdown: what it had taken ran to its end).
        records = [json.loads(r) for r in client.lrange(f"done:{label}", 0, -1)]
        return {"seconds": finished - started, "callbacks": records}

    def check(self, batch_id: str, members: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch completed with the counts the member task was made to give, and
        its callback ran once; the times from the last member's end."""
        from sqlalchemy import func, select

        from celery_reliable.store.schema import batch_members, outbox

        expected = dict.fromkeys(
            ("succeeded", "duplicate", "cancelled", "discarded", "exhausted", "failed"), 0
        )
        for n in range(members):
            expected[self.module.expected_outcome(n)] += 1
        row = self.store.batches.get(batch_id)
        assert row is not None
        with self.store.engine.connect() as connection:
            last_end = connection.execute(
                select(func.max(batch_members.c.ended_at)).where(
                    batch_members.c.batch_id == batch_id
                )
            ).scalar_one()
            outbox_left = connection.execute(select(func.count()).select_from(outbox)).scalar_one()
        problems = []
        if len(records) != 1:
            problems.append(f"the callback ran {len(records)} times")
        summary = records[0]["summary"] if records else {}
        if summary.get("outcomes") != expected:
            problems.append(f"summary outcomes {summary.get('outcomes')} != {expected}")
        if summary.get("total") != members or len(summary.get("failed", ())) != (
            expected["discarded"] + expected["failed"]
        ):
            problems.append(f"summary total/failed wrong: {summary.get('total')}")
        if row.state != "completed" or row.outcomes != expected or row.done != members:
            problems.append(f"batch row {row.state} {row.done} {row.outcomes}")
        if outbox_left:
            problems.append(f"{outbox_left} outbox rows left")
        # The last ending completed the batch (in its own transaction): it is also
        # when the callbacks' messages went into the outbox.
        last = last_end.replace(tzinfo=timezone.utc).timestamp()
        return {
            "problems": problems,
            "outcomes": summary.get("outcomes"),
            "callbacks": len(records),
            "last_end_to_callback_ms": (records[0]["at"] - last) * 1000 if records else None,
        }

    def empty(self) -> None:
        self.redis.delete(QUEUE)

    def close(self) -> None:
        self.redis.close()
        self.store.engine.dispose()


@contextlib.contextmanager
def database(db: str, folder: str) -> Iterator[str]:
    if db == "sqlite":
        yield f"sqlite:///{folder}/batches.sqlite3"
    elif db == "postgresql":
        with servers.postgres_server(durable=True) as url:
            yield url
    else:
        raise SystemExit(f"unknown --db {db!r}: sqlite, postgresql")


def run_db(bench: Bench, members: int, rounds: int, console: Console) -> dict[str, Any]:
    found: dict[str, Any] = {
        "publish_s": {"no batch": [], "batch": []},
        "execute_s": {"no batch": [], "batch": []},
        "seal_s": [],
        "checks": [],
    }
    bench.empty()
    for n in range(min(members, 200)):  # warm: connections, the schema check
        bench.module.member.delay(n)
    bench.empty()
    for round_ in range(rounds):
        order = [False, True] if round_ % 2 == 0 else [True, False]
        for batched in order:
            way = "batch" if batched else "no batch"
            label = f"r{round_}-{uuid.uuid4().hex[:8]}"
            published, batch_id = bench.publish(members, batched, label)
            ran = bench.execute(members, label, batched)
            found["publish_s"][way].append(published)
            found["execute_s"][way].append(ran["seconds"])
            extra = ""
            if batched:
                assert batch_id is not None
                checked = bench.check(batch_id, members, ran["callbacks"])
                found["checks"].append(checked)
                found["seal_s"].append(bench.seal_s)
                extra = (
                    f", of which the seal {bench.seal_s:.2f} s"
                    f"; callback {checked['last_end_to_callback_ms']:.0f} ms after the last end"
                    + (f"; PROBLEMS {checked['problems']}" if checked["problems"] else "")
                )
            console.print(
                f"  round {round_ + 1} {way:<8}: publish {published:.2f} s, "
                f"execute {ran['seconds']:.2f} s ({members / ran['seconds']:.0f}/s){extra}"
            )
            bench.empty()
    med = {
        key: {way: statistics.median(v) for way, v in found[key].items()}
        for key in ("publish_s", "execute_s")
    }
    per_round_exec = [
        a / b
        for a, b in zip(found["execute_s"]["no batch"], found["execute_s"]["batch"], strict=True)
    ]
    per_round_pub = [
        b / a
        for a, b in zip(found["publish_s"]["no batch"], found["publish_s"]["batch"], strict=True)
    ]
    found.update(
        median=med,
        publish_ratio=med["publish_s"]["batch"] / med["publish_s"]["no batch"],
        publish_ratio_per_round=statistics.median(per_round_pub),
        execute_ratio=med["execute_s"]["no batch"] / med["execute_s"]["batch"],
        execute_ratio_per_round=statistics.median(per_round_exec),
        seal_median_s=statistics.median(found["seal_s"]),
        callback_ms=statistics.median(c["last_end_to_callback_ms"] for c in found["checks"]),
        problems=[p for c in found["checks"] for p in c["problems"]],
    )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--work-ms", type=float, default=0.0, help="each member's own work")
    args = parser.parse_args(argv)
    console = Console(stderr=True, width=150)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))  # StatsD lines land here, unread
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-batches-") as folder,
        servers.redis_server() as redis_url,
    ):
        for db in args.db.split(","):
            with database(db, folder) as url:
                console.print(f"{db}:")
                bench = Bench(f"{redis_url}/0", url, sink.getsockname()[1], args.work_ms)
                try:
                    results[db] = run_db(bench, args.members, args.rounds, console)
                finally:
                    bench.close()
    table = Table(
        title=f"{args.members:,} members ({args.work_ms:g} ms of work each), prefork -c 2, "
        f"Redis; median of {args.rounds} rounds"
    )
    for column in (
        "store",
        "publish, no batch",
        "publish, batch",
        "of which the seal",
        "ratio (time)",
        "members/s, no batch",
        "members/s, batch",
        "ratio (throughput)",
        "last end -> callback",
    ):
        table.add_column(column, justify="left" if column == "store" else "right")
    for db, found in results.items():
        pub, exe = found["median"]["publish_s"], found["median"]["execute_s"]
        table.add_row(
            db,
            f"{pub['no batch']:.2f} s",
            f"{pub['batch']:.2f} s",
            f"{found['seal_median_s']:.2f} s",
            f"{found['publish_ratio']:.2f}x ({found['publish_ratio_per_round']:.2f})",
            f"{args.members / exe['no batch']:.0f}",
            f"{args.members / exe['batch']:.0f}",
            f"{found['execute_ratio']:.2f} ({found['execute_ratio_per_round']:.2f})",
            f"{found['callback_ms']:.0f} ms",
        )
    console.print(table)
    console.print("ratios: of the medians (in brackets: the median of each round's own ratio)")
    problems = {db: found["problems"] for db, found in results.items() if found["problems"]}
    for db, found in results.items():
        outcomes = found["checks"][-1]["outcomes"] if found["checks"] else None
        console.print(
            f"{db}: every batch completed, its callback ran once, summary {outcomes}"
            if db not in problems
            else f"{db}: PROBLEMS {problems[db]}"
        )
    result = {
        "members": args.members,
        "work_ms": args.work_ms,
        "rounds": args.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "results": results,
    }
    out = ROOT / ".cache" / f"bench-batches{'-work' if args.work_ms else ''}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
