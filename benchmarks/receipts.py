"""Latency of idempotency receipts on SQLite and PostgreSQL, and whether it grows with the table.

    python -m benchmarks.receipts [--pairs N] [--warmup N] [--sizes 10000,1000000]
                                  [--db sqlite,postgresql] [--json PATH]

For each database, one table per size (an empty table, then one per ``--sizes``), each in
a new database: a SQLite file in a temporary folder (in the WAL mode the store sets), or a
database on a throw-away PostgreSQL server started with ``tests/support/servers.py``. Each has a
store built through the library, as a user would build it, and its receipts table
pre-filled with that many rows (95 % "succeeded", completed over the last 7 days, 5 %
"in_progress"), then ANALYZE. Then, one thread:

* ``--warmup`` then ``--pairs`` claim + complete pairs on each table, each on a new key;
* as many duplicate checks: a claim of a key that already succeeded (the insert conflicts
  and a select reads the receipt), on prefilled keys picked at random.

The tables are measured in turn, ROUND samples at a time, so that other load on the
machine weighs on every size alike instead of on whichever ran during it.

Progress and the table go to stderr, the JSON to stdout (or to ``--json PATH``).
The PostgreSQL server and the temporary files are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from rich.console import Console
from rich.table import Table

from celery_reliable.store import Claim, Receipt, Store, migrate, store_for
from celery_reliable.store.timeutil import utcnow
from tests.support import servers

#: Task names of the receipts, filled and measured alike (prime to IN_PROGRESS_EVERY, so
#: that every task name has in-progress rows too).
TASK_NAMES = 7
#: One prefilled row in this many is "in_progress": claimed, never completed, its lease long
#: expired (abandoned claims, as a table that is not pruned holds them).
IN_PROGRESS_EVERY = 20
#: The prefilled rows completed over this many seconds, up to now.
SPREAD_SECONDS = 7 * 24 * 3600
LEASE_SECONDS = 300.0
#: Samples per table per round: the tables are measured in turn, round after round.
ROUND = 100
SQLITE_BATCH = 10_000
#: Page cache of the connection that fills SQLite (not of the store's connections).
SQLITE_FILL_CACHE_KIB = 512 * 1024

# Wide enough for the table when stderr is a file or a pipe.
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


def task_name(i: int) -> str:
    return f"bench.tasks.task_{i % TASK_NAMES}"


def fill_key(i: int) -> str:
    """The key of prefilled row i: what PostgreSQL's md5('fill-' || i) gives too."""
    return hashlib.md5(f"fill-{i}".encode()).hexdigest()


def in_progress(i: int) -> bool:
    return i % IN_PROGRESS_EVERY == 0


# --------------------------------------------------------------------------- results


@dataclass
class Stats:
    median_us: float
    p95_us: float
    p99_us: float
    mean_us: float
    max_us: float
    samples: int

    @classmethod
    def of(cls, nanoseconds: list[int]) -> Stats:
        us = [ns / 1000 for ns in nanoseconds]
        cuts = statistics.quantiles(us, n=100, method="inclusive")
        return cls(
            median_us=round(statistics.median(us), 1),
            p95_us=round(cuts[94], 1),
            p99_us=round(cuts[98], 1),
            mean_us=round(statistics.fmean(us), 1),
            max_us=round(max(us), 1),
            samples=len(us),
        )


@dataclass
class Phase:
    db: str
    rows: int
    fill_seconds: float = 0.0
    analyze_seconds: float = 0.0
    rows_counted: int = 0
    db_bytes: int = 0
    pair: Stats | None = None
    claim: Stats | None = None
    complete: Stats | None = None
    duplicate: Stats | None = None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- measuring


@dataclass
class Target:
    """One table under measurement: its store and the samples taken so far."""

    phase: Phase
    store: Store
    sqlite_path: Path | None = None
    #: Pairs run so far, warm-up included (numbers the task names and results).
    runs: int = 0
    measured_keys: list[tuple[str, str]] = field(default_factory=list)
    duplicate_keys: list[tuple[str, str]] = field(default_factory=list)
    claim_ns: list[int] = field(default_factory=list)
    complete_ns: list[int] = field(default_factory=list)
    pair_ns: list[int] = field(default_factory=list)
    duplicate_ns: list[int] = field(default_factory=list)


def run_pairs(target: Target, count: int, record: bool) -> None:
    """claim + complete, each pair on a new key."""
    store, clock = target.store, time.perf_counter_ns
    for _ in range(count):
        j, target.runs = target.runs, target.runs + 1
        name, key = task_name(j), uuid.uuid4().hex
        payload_hash = hashlib.sha256(key.encode()).hexdigest()
        task_id = str(uuid.uuid4())
        result_json = json.dumps({"ok": True, "n": j})
        t0 = clock()
        claim = store.receipts.claim(name, key, payload_hash, task_id, LEASE_SECONDS)
        t1 = clock()
        if not isinstance(claim, Claim):
            raise RuntimeError(f"new key {name}/{key} was not claimed: {claim}")
        completed = store.receipts.complete(claim, result_json)
        t2 = clock()
        if not completed:
            raise RuntimeError(f"claim on {name}/{key} could not be completed")
        if record:
            target.claim_ns.append(t1 - t0)
            target.complete_ns.append(t2 - t1)
            target.pair_ns.append(t2 - t0)
            target.measured_keys.append((name, key))


def run_duplicates(target: Target, keys: list[tuple[str, str]], record: bool) -> None:
    """A claim of a key that already succeeded: the insert conflicts, a select follows."""
    store, clock = target.store, time.perf_counter_ns
    for name, key in keys:
        task_id = str(uuid.uuid4())
        t0 = clock()
        existing = store.receipts.claim(name, key, "0" * 64, task_id, LEASE_SECONDS)
        t1 = clock()
        if not isinstance(existing, Receipt) or existing.state != "succeeded":
            raise RuntimeError(f"{name}/{key} should be a succeeded receipt, got {existing}")
        if record:
            target.duplicate_ns.append(t1 - t0)


def pick_duplicate_keys(target: Target, count: int) -> list[tuple[str, str]]:
    """Succeeded keys to claim again: prefilled ones at random (the measured ones on an
    empty table), repeated if there are fewer than count."""
    rows = target.phase.rows
    rng = random.Random(rows)
    if rows == 0:
        keys = list(target.measured_keys)
    else:
        succeeded = rows - ((rows - 1) // IN_PROGRESS_EVERY + 1)
        picked: set[int] = set()
        while len(picked) < min(count, succeeded):
            i = rng.randrange(rows)
            if not in_progress(i):
                picked.add(i)
        keys = [(task_name(i), fill_key(i)) for i in sorted(picked)]
    rng.shuffle(keys)
    return [keys[n % len(keys)] for n in range(count)]


def interleaved(targets: list[Target], total: int, run: Callable[[Target, int, int], None]) -> None:
    """Rounds of ROUND samples on each table in turn (the order reversed every other
    round), so that a burst of other load on the machine hits every table alike."""
    for number, start in enumerate(range(0, total, ROUND)):
        count = min(ROUND, total - start)
        for target in targets if number % 2 == 0 else targets[::-1]:
            run(target, start, count)


def measure(targets: list[Target], args: argparse.Namespace, db: str) -> None:
    sizes = ", ".join(f"{t.phase.rows:,}" for t in targets)
    console.print(
        f"  {db}: {args.warmup} warm-up + {args.pairs} claim + complete pairs on each table "
        f"({sizes} rows), in interleaved rounds of {ROUND} ..."
    )
    for target in targets:
        run_pairs(target, args.warmup, record=False)
    gc.collect()
    interleaved(targets, args.pairs, lambda t, _start, n: run_pairs(t, n, record=True))
    console.print(
        f"  {db}: {args.warmup} warm-up + {args.pairs} duplicate checks on each table ..."
    )
    for target in targets:
        keys = pick_duplicate_keys(target, args.warmup + args.pairs)
        run_duplicates(target, keys[: args.warmup], record=False)
        target.duplicate_keys = keys[args.warmup :]
    gc.collect()
    interleaved(
        targets,
        args.pairs,
        lambda t, start, n: run_duplicates(t, t.duplicate_keys[start : start + n], record=True),
    )
    for target in targets:
        phase = target.phase
        phase.pair = Stats.of(target.pair_ns)
        phase.claim = Stats.of(target.claim_ns)
        phase.complete = Stats.of(target.complete_ns)
        phase.duplicate = Stats.of(target.duplicate_ns)
        if target.sqlite_path is not None:
            path = target.sqlite_path
            phase.db_bytes = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        else:
            phase.db_bytes = postgres_bytes(target.store)
        console.print(
            f"  {db}/{phase.rows:,}: pair median {phase.pair.median_us:,.0f} µs, "
            f"duplicate median {phase.duplicate.median_us:,.0f} µs"
        )


# --------------------------------------------------------------------------- filling


def _sqlite_rows(start: int, stop: int, rows: int, first: datetime) -> Iterator[tuple[Any, ...]]:
    def ts(moment: datetime) -> str:  # SQLAlchemy's storage format for SQLite DateTime
        return moment.isoformat(" ", "microseconds")

    for i in range(start, stop):
        at = first + timedelta(seconds=SPREAD_SECONDS * i / rows)
        busy = in_progress(i)
        yield (
            task_name(i),
            fill_key(i),
            hashlib.sha256(f"payload-{i}".encode()).hexdigest(),
            "in_progress" if busy else "succeeded",
            str(uuid.uuid4()),
            uuid.uuid4().hex,
            1,
            ts(at + timedelta(seconds=LEASE_SECONDS)) if busy else None,
            None if busy else f'{{"ok": true, "n": {i}}}',
            ts(at - timedelta(seconds=2)),
            ts(at),
            None if busy else ts(at),
        )


INSERT_SQLITE = (
    "INSERT INTO reliable_receipts (task_name, key, payload_hash, state, task_id, claim_token,"
    " claims, lease_expires_at, result, created_at, updated_at, completed_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def fill_sqlite(path: Path, rows: int, phase: Phase) -> None:
    """executemany in batches, one transaction, on a connection of its own (big cache)."""
    first = utcnow() - timedelta(seconds=SPREAD_SECONDS)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute(f"PRAGMA cache_size=-{SQLITE_FILL_CACHE_KIB}")
        started = time.perf_counter()
        connection.execute("BEGIN IMMEDIATE")
        for start in range(0, rows, SQLITE_BATCH):
            stop = min(rows, start + SQLITE_BATCH)
            connection.executemany(INSERT_SQLITE, _sqlite_rows(start, stop, rows, first))
        connection.execute("COMMIT")
        phase.fill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        connection.execute("ANALYZE")
        phase.analyze_seconds = time.perf_counter() - started
        # Leave no filled pages in the WAL for the measured commits to checkpoint.
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        connection.close()


FILL_POSTGRES = sa.text(
    """
    INSERT INTO reliable_receipts (task_name, key, payload_hash, state, task_id, claim_token,
        claims, lease_expires_at, result, created_at, updated_at, completed_at)
    SELECT 'bench.tasks.task_' || (i % :names),
           md5('fill-' || i),
           md5('payload-' || i) || md5('hash-' || i),
           CASE WHEN i % :every = 0 THEN 'in_progress' ELSE 'succeeded' END,
           gen_random_uuid()::text,
           md5(random()::text),
           1,
           CASE WHEN i % :every = 0 THEN at + make_interval(secs => :lease) END,
           CASE WHEN i % :every = 0 THEN NULL ELSE '{"ok": true, "n": ' || i || '}' END,
           at - interval '2 seconds',
           at,
           CASE WHEN i % :every = 0 THEN NULL ELSE at END
    FROM (SELECT i, CAST(:first AS timestamp) + make_interval(secs => :spread * i::float8 / :rows)
                 AS at
          FROM generate_series(0, :rows - 1) AS i) AS s
    """
)


def fill_postgres(store: Store, rows: int, phase: Phase) -> None:
    """One INSERT ... SELECT FROM generate_series, then VACUUM (ANALYZE) and CHECKPOINT."""
    params = {
        "names": TASK_NAMES,
        "every": IN_PROGRESS_EVERY,
        "lease": LEASE_SECONDS,
        "first": utcnow() - timedelta(seconds=SPREAD_SECONDS),
        "spread": SPREAD_SECONDS,
        "rows": rows,
    }
    started = time.perf_counter()
    with store.engine.begin() as connection:
        connection.execute(FILL_POSTGRES, params)
    phase.fill_seconds = time.perf_counter() - started
    started = time.perf_counter()
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        # VACUUM as well as ANALYZE: sets hint bits and the visibility map once, as
        # autovacuum would have on a table that grew over days, instead of making the
        # first measured reads of each page write it.
        connection.exec_driver_sql("VACUUM (ANALYZE) reliable_receipts")
        connection.exec_driver_sql("CHECKPOINT")
    phase.analyze_seconds = time.perf_counter() - started


def count_rows(store: Store) -> int:
    with store.engine.connect() as connection:
        return int(
            connection.exec_driver_sql("SELECT count(*) FROM reliable_receipts").scalar_one()
        )


def postgres_bytes(store: Store) -> int:
    with store.engine.connect() as connection:
        query = "SELECT pg_total_relation_size('reliable_receipts')"
        return int(connection.exec_driver_sql(query).scalar_one())


# --------------------------------------------------------------------------- phases


def build_store(url: str) -> Store:
    app = Celery("bench", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = url
    store = store_for(app)
    assert store is not None
    return store


def prepare(
    db: str, rows: int, url: str, stack: contextlib.ExitStack, sqlite_path: Path | None = None
) -> Target:
    """A store on a new database, its table filled with rows rows."""
    phase = Phase(db=db, rows=rows)
    store = build_store(url)
    stack.callback(store.dispose)
    if db == "sqlite":
        store.ensure_schema()
    else:
        migrate.upgrade(store.engine)
    if rows:
        console.print(f"  {db}: filling {rows:,} rows ...")
        if sqlite_path is not None:
            fill_sqlite(sqlite_path, rows, phase)
        else:
            fill_postgres(store, rows, phase)
        console.print(
            f"  {db}: filled {rows:,} rows in {phase.fill_seconds:.1f} s, "
            f"{'ANALYZE' if db == 'sqlite' else 'VACUUM (ANALYZE) + CHECKPOINT'} "
            f"{phase.analyze_seconds:.1f} s"
        )
    phase.rows_counted = count_rows(store)
    if phase.rows_counted != rows:
        raise RuntimeError(f"{db}: {phase.rows_counted} rows after filling {rows}")
    return Target(phase=phase, store=store, sqlite_path=sqlite_path)


def sqlite_run(
    sizes: list[int], args: argparse.Namespace, tmp: Path, report: Callable[[Phase], None]
) -> None:
    console.print(f"[bold]SQLite {sqlite3.sqlite_version}[/] (files in {tmp})")
    with contextlib.ExitStack() as stack:
        targets = []
        for rows in sizes:
            folder = tmp / f"sqlite-{rows}"
            folder.mkdir(mode=0o700)
            stack.callback(shutil.rmtree, folder, ignore_errors=True)
            path = folder / "receipts.sqlite3"
            targets.append(prepare("sqlite", rows, f"sqlite:///{path}", stack, sqlite_path=path))
        measure(targets, args, "sqlite")
        for target in targets:
            report(target.phase)


def _stop_postmasters(root: Path) -> None:
    """Stop any server still running from a folder under root (a start cut short)."""
    for pid_file in root.glob("*/data/postmaster.pid"):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        pg_ctl = servers._pg_bin("pg_ctl")
        data = str(pid_file.parent)
        subprocess.run(
            [*prefix, pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
        )


@contextlib.contextmanager
def postgres_server(tmp: Path) -> Iterator[str]:
    """``tests/support/servers.py``'s server, its folder made inside ours.

    Its own clean-up only starts once the server is up; a Ctrl-C during initdb or
    pg_ctl start (they get the terminal's SIGINT too) would leave a folder, or a running
    server, behind. Here whatever is left is ours to stop and delete.
    """
    root = tmp / "postgresql"
    root.mkdir()
    for folder in (tmp, root):  # the postgres user must reach its own folder inside
        os.chmod(folder, 0o711)
    try:
        with contextlib.ExitStack() as stack:
            saved, tempfile.tempdir = tempfile.tempdir, str(root)
            try:
                url = stack.enter_context(servers.postgres_server())
            finally:
                tempfile.tempdir = saved
            yield url
    finally:
        _stop_postmasters(root)


def postgres_run(
    sizes: list[int], args: argparse.Namespace, tmp: Path, report: Callable[[Phase], None]
) -> None:
    console.print(
        "[bold]PostgreSQL[/]: starting a throw-away server (tests/support/servers.py) ..."
    )
    with contextlib.ExitStack() as stack:
        server_url = stack.enter_context(postgres_server(tmp))
        admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
        stack.callback(admin.dispose)
        with admin.connect() as connection:
            version = connection.exec_driver_sql("SHOW server_version").scalar()
            settings = {
                name: connection.exec_driver_sql(f"SHOW {name}").scalar()
                for name in ("fsync", "synchronous_commit", "shared_buffers")
            }
        console.print(f"[bold]PostgreSQL {version}[/] at {server_url} {settings}")
        targets = []
        for rows in sizes:
            name = f"bench_{rows}"
            with admin.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
            url = server_url.rsplit("/", 1)[0] + f"/{name}"
            targets.append(prepare("postgresql", rows, url, stack))
        measure(targets, args, "postgresql")
        for target in targets:
            target.phase.notes.append(f"server {version}, {settings}")
            report(target.phase)


# --------------------------------------------------------------------------- output


def table(phases: list[Phase]) -> Table:
    out = Table(
        title="celery_reliable receipts: latency in µs, one thread",
        caption="pair: claim + complete of a new key; dup: claim of a key that succeeded. "
        "MB: the database (SQLite file + WAL; PostgreSQL table + indexes) after the run.",
    )
    out.add_column("database")
    out.add_column("rows", justify="right")
    out.add_column("fill s", justify="right")
    out.add_column("MB", justify="right")
    for what in ("pair", "dup"):
        for q in ("p50", "p95", "p99"):
            out.add_column(f"{what} {q}", justify="right")
    for phase in phases:
        assert phase.pair is not None and phase.duplicate is not None
        out.add_row(
            phase.db,
            f"{phase.rows:,}",
            f"{phase.fill_seconds:.1f}" if phase.rows else "-",
            f"{phase.db_bytes / 1e6:,.1f}",
            *(f"{v:,.0f}" for v in (phase.pair.median_us, phase.pair.p95_us, phase.pair.p99_us)),
            *(
                f"{v:,.0f}"
                for v in (phase.duplicate.median_us, phase.duplicate.p95_us, phase.duplicate.p99_us)
            ),
        )
    return out


def as_json(phases: list[Phase], args: argparse.Namespace, seconds: float, done: bool) -> str:
    return json.dumps(
        {
            "benchmark": "celery_reliable receipts claim + complete",
            "complete": done,
            "pairs": args.pairs,
            "warmup": args.warmup,
            "round": ROUND,
            "seconds": round(seconds, 1),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "phases": [
                {
                    "db": p.db,
                    "rows": p.rows,
                    "fill_seconds": round(p.fill_seconds, 2),
                    "analyze_seconds": round(p.analyze_seconds, 2),
                    "db_bytes": p.db_bytes,
                    "claim_complete_us": vars(p.pair) if p.pair else None,
                    "claim_us": vars(p.claim) if p.claim else None,
                    "complete_us": vars(p.complete) if p.complete else None,
                    "duplicate_claim_us": vars(p.duplicate) if p.duplicate else None,
                    "notes": p.notes,
                }
                for p in phases
            ],
        },
        indent=2,
    )


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.receipts",
        description="Latency of claim + complete of idempotency receipts, as the table grows. "
        "An empty table is always measured first. Progress and the table go to stderr; "
        "the JSON to stdout, or to --json PATH.",
    )
    parser.add_argument("--pairs", type=int, default=2000, help="measured pairs (2000)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up pairs (200)")
    parser.add_argument(
        "--sizes",
        default="10000,1000000",
        help="rows to pre-fill the table with, comma-separated (10000,1000000)",
    )
    parser.add_argument("--db", default="sqlite,postgresql", help="sqlite,postgresql")
    parser.add_argument("--json", type=Path, default=None, help="write the JSON here")
    args = parser.parse_args(argv)
    try:
        sizes = sorted({0, *(int(s.replace("_", "")) for s in args.sizes.split(",") if s)})
    except ValueError:
        parser.error(f"--sizes: not a list of integers: {args.sizes!r}")
    if any(size < 0 for size in sizes):
        parser.error("--sizes: rows cannot be negative")
    args.size_list = sizes
    args.db_list = [d.strip() for d in args.db.split(",") if d.strip()]
    unknown = set(args.db_list) - {"sqlite", "postgresql"}
    if unknown or not args.db_list:
        parser.error(f"--db: sqlite and/or postgresql, not {args.db!r}")
    if args.pairs < 2:
        parser.error("--pairs: at least 2")
    if args.warmup < 0:
        parser.error("--warmup: cannot be negative")
    return args


def _interrupted(signum: int, _frame: Any) -> None:
    """Stop measuring; a second Ctrl-C must not cut the clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _interrupted)
        signal.signal(signal.SIGTERM, _interrupted)  # clean up on kill as on Ctrl-C
    phases: list[Phase] = []
    started = time.perf_counter()
    done = False
    try:
        with tempfile.TemporaryDirectory(prefix="reliable-bench-") as tmp:
            if "sqlite" in args.db_list:
                sqlite_run(args.size_list, args, Path(tmp), phases.append)
            if "postgresql" in args.db_list:
                postgres_run(args.size_list, args, Path(tmp), phases.append)
        done = True
    except KeyboardInterrupt:
        console.print(
            "[red]interrupted[/]: temporary files removed, PostgreSQL server (if any) stopped"
        )
    finally:
        seconds = time.perf_counter() - started
        if phases:
            console.print(table(phases))
        console.print(
            f"{args.warmup} warm-up + {args.pairs} measured pairs per row; "
            f"run took {seconds:.0f} s. PostgreSQL is the test server (fsync=off, "
            "synchronous_commit=off); SQLite is WAL with synchronous=NORMAL, as the store "
            "sets it: neither waits for the disk at commit."
        )
        output = as_json(phases, args, seconds, done)
        if args.json is not None:
            args.json.write_text(output + "\n")
            console.print(f"JSON written to {args.json}")
        else:
            sys.stdout.write(output + "\n")
    return 0 if done else 130


if __name__ == "__main__":
    sys.exit(main())
