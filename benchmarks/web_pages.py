"""Response times of the web view's pages with a large store, on SQLite and PostgreSQL.

    python -m benchmarks.web_pages [--dead-letters N] [--receipts N] [--locks N]
                                   [--history-days N] [--requests N] [--warmup N]
                                   [--db sqlite,postgresql] [--json PATH]

For each database, a new store (a SQLite file in a temporary folder, or a database on a
throw-away PostgreSQL server from ``tests/support/servers.py``), its schema made by the shipped
migrations (so the real indexes exist), then filled with bulk multi-row INSERTs through
SQLAlchemy core on the schema's tables (see :func:`fill`):

* 100,000 dead letters over 30 days, oldest first (ids in time order, as a store gets
  them), over 20 tasks (a few busy, most quiet), the three outcomes, reasons and
  messages of varied text, tracebacks, a retry history for the exhausted, ~10 % retried;
* 1,000,000 idempotency receipts over 30 days: ~99 % succeeded, 1 % abandoned (in
  progress, lease run out long ago), a few hundred in progress with a live lease;
* 5,000 unique-enqueue locks (about half of them expired) and a day of outcome history
  (``--history-days``; the history is kept 7 days by default), one row per task, queue,
  outcome and minute.

PostgreSQL then gets ``VACUUM (ANALYZE)`` and ``VACUUM`` (what autovacuum does to tables
that grew over days: statistics, and pages marked all-visible for index-only scans, see
:func:`vacuum`);
SQLite gets nothing (the store never runs ANALYZE, so a real store has no statistics).

The app (``celery_reliable.web.create_app``, no credentials: loopback clients only) is
served by uvicorn in a thread of this process on a free loopback port, with a real
redis-server as the broker (the overview reads the queue depths from it). Each page is
requested with urllib (a new connection each time, the whole body read): ``--warmup``
requests each, then ``--requests`` rounds over every page in turn. The table gives the
median and p95 in milliseconds; the rows column is what the page showed (a check that
it showed what it should). Progress goes to stderr, the Markdown table to stdout, the
figures as JSON to ``.cache/bench-web-pages.json`` (or ``--json PATH``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from celery import Celery
from kombu import Queue
from rich.console import Console
from sqlalchemy.dialects import postgresql

from benchmarks.receipts import postgres_server
from celery_reliable import ReliableTask
from celery_reliable.store import forget_store, migrate
from celery_reliable.store.engine import create_store_engine
from celery_reliable.store.schema import (
    DURATION_BUCKETS,
    dead_letters,
    outcome_history,
    receipts,
    unique_locks,
)
from celery_reliable.store.timeutil import utcnow
from tests.support import servers

ROOT = Path(__file__).resolve().parent.parent
console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)

#: The tasks: (name, queue, key style of its receipts, key prefix). A few busy, most
#: quiet: task i weighs 1 / (i + 1) in every table.
TASKS = [
    ("shop.charge_payment", "payments", "number", "charge"),
    ("shop.send_receipt_email", "emails", "uuid", ""),
    ("shop.ship_order", "celery", "number", "ship"),
    ("shop.reserve_stock", "celery", "number", "reserve"),
    ("shop.sync_inventory", "celery", "date", "sku"),
    ("billing.create_invoice", "payments", "number", "invoice"),
    ("billing.refund_payment", "payments", "number", "refund"),
    ("billing.retry_declined_card", "payments", "uuid", ""),
    ("notify.push_notification", "emails", "uuid", ""),
    ("notify.sms_delivery_code", "emails", "number", "sms"),
    ("crm.update_contact", "celery", "number", "contact"),
    ("crm.merge_duplicates", "celery", "date", "merge"),
    ("search.reindex_product", "celery", "number", "product"),
    ("search.rebuild_suggestions", "celery", "date", "suggest"),
    ("reports.daily_sales", "celery", "date", "sales"),
    ("reports.export_csv", "celery", "uuid", ""),
    ("partners.webhook_delivery", "celery", "uuid", ""),
    ("partners.pull_price_feed", "celery", "date", "feed"),
    ("media.resize_image", "celery", "uuid", ""),
    ("media.transcode_video", "celery", "number", "video"),
]
TASK_NAMES = [name for name, *_ in TASKS]
WEIGHTS = [1 / (i + 1) for i in range(len(TASKS))]
QUEUES = sorted({queue for _, queue, *_ in TASKS})
SPREAD = timedelta(days=30)
#: The word the text search looks for: in ~1.5 % of the reasons.
SEARCH = "deadlock"
#: Rows per multi-row INSERT on SQLite (the parameters stay under its 32,766).
INSERT_ROWS = 1000
#: Rows generated at a time, and per INSERT on PostgreSQL.
BATCH = 10_000

HOSTS = ["api.stripe.example", "smtp-2.mail.internal", "db-primary.internal", "carrier.example"]
TABLES = ["orders", "stock_levels", "invoices", "payments", "contacts"]
FIELDS = ["email", "sku", "amount", "currency", "address_id", "customer_id"]
ATTRS = ["total", "lines", "customer", "address", "warehouse"]
COUNTRIES = ["DE", "FR", "NL", "US", "GB", "PL"]


# --------------------------------------------------------------------------- the data


@dataclass
class Counts:
    dead_letters: int
    receipts: int
    locks: int
    history_days: int = 1
    history: int = 0
    dead_retried: int = 0
    receipts_abandoned: int = 0
    receipts_in_progress: int = 0


def _reason(rng: random.Random, outcome: str, attempts: int) -> tuple[str, str, str]:
    """(exception type, exception message, reason) of a dead letter, varied text."""
    n = rng.randrange(100_000, 999_999)
    host = rng.choice(HOSTS)
    if outcome == "discarded":
        exc, message = rng.choice(
            [
                ("shop.errors.GatewayRefused", f"card declined for order {n}"),
                (
                    "shop.errors.InvalidAddress",
                    f"postcode {rng.randrange(10000, 99999)} does not exist in "
                    f"{rng.choice(COUNTRIES)}",
                ),
                (
                    "pydantic.ValidationError",
                    f"1 validation error for Order\n{rng.choice(FIELDS)}: value is not valid",
                ),
                (
                    "requests.HTTPError",
                    f"404 Client Error: Not Found for url: https://{host}/v2/{n}",
                ),
            ]
        )
        return exc, message, f"{exc.rsplit('.', 1)[-1]}: {message} (discard_on)"
    if outcome == "exhausted":
        exc, message = rng.choices(
            [
                ("TimeoutError", f"read timed out after {rng.choice([5, 10, 30])} s ({host})"),
                ("ConnectionRefusedError", f"[Errno 111] Connection refused ({host}:443)"),
                (
                    "psycopg.errors.DeadlockDetected",
                    f"deadlock detected on relation {rng.choice(TABLES)} (process {n})",
                ),
                ("requests.HTTPError", f"503 Server Error: Service Unavailable ({host})"),
            ],
            weights=[40, 30, 4, 26],
        )[0]
        return exc, message, f"{exc.rsplit('.', 1)[-1]}: {message} (attempt {attempts}/{attempts})"
    exc, message = rng.choice(
        [
            ("KeyError", f"'{rng.choice(FIELDS)}'"),
            ("ZeroDivisionError", "division by zero"),
            ("AttributeError", f"'NoneType' object has no attribute '{rng.choice(ATTRS)}'"),
            ("celery.exceptions.TimeLimitExceeded", f"TimeLimitExceeded({rng.choice([60, 300])})"),
        ]
    )
    return exc, message, f"unclassified {exc.rsplit('.', 1)[-1]}: {message}"


def _traceback(rng: random.Random, task: str, exc: str, message: str) -> str:
    module = task.rsplit(".", 1)[0]
    frames = [
        '  File "/app/.venv/lib/python3.12/site-packages/celery/app/trace.py", line 453,'
        " in trace_task\n    R = retval = fun(*args, **kwargs)",
        '  File "/app/.venv/lib/python3.12/site-packages/celery_reliable/task.py", line 212,'
        " in __call__\n    return self.run(*args, **kwargs)",
    ]
    for depth in range(rng.randrange(2, 6)):
        frames.append(
            f'  File "/app/{module}/tasks.py", line {rng.randrange(20, 400)}, in '
            f"step_{depth}\n    result = client.call(payload, timeout=self.timeout)"
        )
    return "Traceback (most recent call last):\n" + "\n".join(frames) + f"\n{exc}: {message}"


def dead_letter_rows(count: int, now: datetime, seed: int = 1) -> Iterator[list[dict[str, Any]]]:
    """Batches of dead letters, oldest first: ~50 % discarded, 35 % exhausted, 15 % failed."""
    rng = random.Random(seed)
    first = now - SPREAD
    batch: list[dict[str, Any]] = []
    for i in range(count):
        task, queue, *_ = rng.choices(TASKS, WEIGHTS)[0]
        outcome = rng.choices(["discarded", "exhausted", "failed"], [50, 35, 15])[0]
        attempts = rng.choice([3, 5, 8]) if outcome == "exhausted" else 1
        exc, message, reason = _reason(rng, outcome, attempts)
        created = first + SPREAD * (i + rng.random()) / count
        history = (
            [
                [k, (created - timedelta(minutes=2 ** (attempts - k))).timestamp(), reason]
                for k in range(1, attempts)
            ]
            if outcome == "exhausted"
            else []
        )
        options = {
            "exchange": "",
            "routing_key": queue,
            "priority": None,
            "headers": {"tenant": f"t{rng.randrange(40)}"},
            "root_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "parent_id": None,
            "retry_history": history,
        }
        retried = rng.random() < 0.10
        retried_at = min(now, created + timedelta(minutes=rng.randrange(1, 2880)))
        order = rng.randrange(100_000, 999_999)
        batch.append(
            {
                "task_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "task_name": task,
                "queue": queue,
                "args": json.dumps([order]),
                "kwargs": json.dumps({"customer_id": rng.randrange(1, 50_000), "notify": True}),
                "options": json.dumps(options),
                "redacted": False,
                "outcome": outcome,
                "exc_type": exc,
                "exc_message": message,
                "traceback": _traceback(rng, task, exc, message),
                "reason": reason,
                "attempts": attempts,
                "created_at": created,
                "retried_at": retried_at if retried else None,
                "retried_task_id": str(uuid.UUID(int=rng.getrandbits(128))) if retried else None,
            }
        )
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def receipt_key(rng: random.Random, task: int, n: int, created: datetime) -> str:
    _, _, style, prefix = TASKS[task]
    if style == "uuid":
        return uuid.UUID(int=rng.getrandbits(128)).hex
    if style == "date":
        return f"{prefix}:{created:%Y-%m-%d}:{n}"
    return f"{prefix}:{100_000 + n}"


def receipt_rows(count: int, now: datetime, seed: int = 2) -> Iterator[list[dict[str, Any]]]:
    """Batches of receipts, oldest first, each task's keys numbered in time order."""
    rng = random.Random(seed)
    first = now - SPREAD
    live_from = count - count // 500  # the newest 0.2 %: some are still running
    numbers = [0] * len(TASKS)
    indexes = list(range(len(TASKS)))
    batch: list[dict[str, Any]] = []
    for i in range(count):
        task = rng.choices(indexes, WEIGHTS)[0]
        numbers[task] += 1
        created = first + SPREAD * (i + rng.random()) / count
        done = created + timedelta(seconds=rng.expovariate(1 / 0.8))
        roll = rng.random()
        if i >= live_from and roll < 0.3:
            state, lease, completed = (
                "in_progress",
                now + timedelta(minutes=rng.randrange(5, 30)),
                None,
            )
        elif roll < 0.01:
            state, lease, completed = "in_progress", created + timedelta(minutes=5), None
        else:
            state, lease, completed = "succeeded", None, done
        batch.append(
            {
                "task_name": TASKS[task][0],
                "key": receipt_key(rng, task, numbers[task], created),
                "payload_hash": f"{rng.getrandbits(256):064x}",
                "state": state,
                "task_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "claim_token": f"{rng.getrandbits(128):032x}",
                "claims": 1 if rng.random() < 0.97 else 2,
                "lease_expires_at": lease,
                "result": None if completed is None else json.dumps({"id": f"ch_{i}", "ok": True}),
                "created_at": created,
                "updated_at": completed or created,
                "completed_at": completed,
            }
        )
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def lock_rows(count: int, now: datetime, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = {}
    while len(rows) < count:
        task = rng.choices(range(len(TASKS)), WEIGHTS)[0]
        created = now - timedelta(seconds=rng.randrange(1, 6 * 3600))
        key = receipt_key(rng, task, rng.randrange(200_000), created)
        rows[TASKS[task][0], key] = {
            "task_name": TASKS[task][0],
            "key": key,
            "task_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "expires_at": created + timedelta(hours=rng.choice([1, 3, 12])),
            "created_at": created,
        }
    return list(rows.values())


def history_rows(now: datetime, days: int = 1, seed: int = 4) -> Iterator[list[dict[str, Any]]]:
    """``days`` of outcome history: per task and minute, succeeded, and now and then
    retried, discarded, exhausted or failed."""
    rng = random.Random(seed)
    last = now.replace(second=0, microsecond=0)
    batch: list[dict[str, Any]] = []
    for minute_back in range(days * 24 * 60, -1, -1):
        minute = last - timedelta(minutes=minute_back)
        for (task, queue, *_), weight in zip(TASKS, WEIGHTS, strict=True):
            for outcome, chance, scale in (
                ("succeeded", 1.0, 60),
                ("retried", 0.3, 3),
                ("discarded", 0.05, 1),
                ("exhausted", 0.03, 1),
                ("failed", 0.02, 1),
            ):
                if rng.random() >= chance:
                    continue
                executions = 1 + int(rng.expovariate(1 / (scale * weight)))
                durations = [rng.expovariate(1 / 0.3) for _ in range(min(executions, 5))]
                row: dict[str, Any] = {
                    "task_name": task,
                    "minute": minute,
                    "queue": queue,
                    "outcome": outcome,
                    "count": executions,
                    "duration_count": executions,
                    "duration_sum": sum(durations) * executions / len(durations),
                    "duration_max": max(durations),
                    **dict.fromkeys(DURATION_BUCKETS, 0),
                }
                row["under_500ms"] = executions // 2
                row["under_1s"] = executions - executions // 2
                batch.append(row)
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def unnest_insert(table: sa.Table, names: list[str]) -> Any:
    """PostgreSQL: ``INSERT INTO table (...) SELECT unnest(:a), unnest(:b), ...``, one
    array parameter per column: many rows in one statement, with a dozen parameters."""
    columns = [table.c[name] for name in names]
    arrays = [
        sa.func.unnest(sa.bindparam(c.name, type_=postgresql.ARRAY(c.type))).label(c.name)
        for c in columns
    ]
    return sa.insert(table).from_select(names, sa.select(*arrays))


def fill(url: str, counts: Counts, now: datetime) -> dict[str, float]:
    """Every table filled by multi-row INSERTs on the schema's tables, one transaction
    per table; returns the seconds each took.

    SQLite: ``INSERT ... VALUES (...), (...), ...`` of ``INSERT_ROWS`` rows, by SQLAlchemy's
    "insertmanyvalues" (the statement compiled once; ``insert().values([...])`` compiles
    each batch anew, slower than the database). Both dialects use it for INSERT ...
    RETURNING; the dialect's ``use_insertmanyvalues_wo_returning`` asks for it without.
    PostgreSQL: ``INSERT ... SELECT unnest(...)`` of ``BATCH`` rows, one array per column
    (:func:`unnest_insert`): psycopg parses a query's placeholders in Python, each time for
    a long one, so a VALUES list of 12,000 parameters costs ~65 ms of client time per
    1,000 rows (over a minute for the receipts).
    """
    engine = sa.create_engine(url, insertmanyvalues_page_size=INSERT_ROWS)
    engine.dialect.use_insertmanyvalues_wo_returning = True
    on_postgresql = engine.dialect.name == "postgresql"
    seconds: dict[str, float] = {}

    def load(table: sa.Table, batches: Iterator[list[dict[str, Any]]], what: str) -> int:
        started, rows = time.perf_counter(), 0
        with engine.begin() as connection:
            for batch in batches:
                if on_postgresql:
                    names = list(batch[0])
                    arrays = {name: [row[name] for row in batch] for name in names}
                    connection.execute(unnest_insert(table, names), arrays)
                else:
                    connection.execute(sa.insert(table), batch)
                rows += len(batch)
        seconds[what] = time.perf_counter() - started
        console.print(f"    {what}: {rows:,} rows in {seconds[what]:.1f} s")
        return rows

    try:
        load(dead_letters, dead_letter_rows(counts.dead_letters, now), "dead letters")
        load(receipts, receipt_rows(counts.receipts, now), "receipts")
        load(unique_locks, iter([lock_rows(counts.locks, now)]), "unique locks")
        counts.history = load(
            outcome_history, history_rows(now, counts.history_days), "outcome history"
        )
        with engine.connect() as connection:
            one = connection.execute
            counts.dead_retried = one(
                sa.select(sa.func.count()).where(dead_letters.c.retried_at.is_not(None))
            ).scalar_one()
            in_progress = receipts.c.state == "in_progress"
            counts.receipts_in_progress = one(
                sa.select(sa.func.count()).where(in_progress)
            ).scalar_one()
            counts.receipts_abandoned = one(
                sa.select(sa.func.count()).where(in_progress, receipts.c.lease_expires_at < now)
            ).scalar_one()
        if engine.dialect.name == "postgresql":
            seconds["vacuum"], passes, visible = vacuum(engine)
            console.print(
                f"    VACUUM (ANALYZE) + {passes} x VACUUM + CHECKPOINT: {seconds['vacuum']:.1f} s;"
                f" pages all-visible: {visible}"
            )
        else:
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return seconds


def vacuum(engine: sa.Engine) -> tuple[float, int, str]:
    """PostgreSQL: what autovacuum has done to tables that grew over days, statistics
    and pages marked all-visible (index-only scans need them), then a checkpoint.

    Right after the load, the first VACUUM here often leaves some tables (the dead
    letters, the history) without a page marked all-visible (``pg_class.relallvisible``
    0: PostgreSQL then scans the table where an index-only scan serves it), and a plain
    VACUUM a moment later marks them: so VACUUM until every table is (10 passes at most).
    """
    started = time.perf_counter()
    share = sa.text(
        "SELECT relname, relallvisible::float / greatest(relpages, 1) FROM pg_class"
        " WHERE relname LIKE 'reliable%' AND relkind = 'r' ORDER BY relname"
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM (ANALYZE)")
        passes, visible = 0, []
        while passes < 10 and not (visible and all(part >= 0.99 for _, part in visible)):
            time.sleep(0.5)
            connection.exec_driver_sql("VACUUM")
            passes += 1
            visible = connection.execute(share).all()
        connection.exec_driver_sql("CHECKPOINT")
    shares = ", ".join(f"{name.removeprefix('reliable_')} {part:.0%}" for name, part in visible)
    return time.perf_counter() - started, passes, shares


def bench_app(broker: str, store_url: str) -> Celery:
    """The app the view shows: its tasks are the store's, as ReliableTasks (the gates
    page audits them, the overview lists them)."""
    app = Celery("bench-web", broker=broker, set_as_current=False)
    app.conf.update(
        reliable_database_url=store_url,
        reliable_log_outcomes=False,
        broker_connection_retry_on_startup=False,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_queues=[Queue(name) for name in QUEUES],
    )
    for number, (name, _queue, style, prefix) in enumerate(TASKS):
        options: dict[str, Any] = {"timeout": 30 + number}
        if style == "number":
            options["idempotency_key"] = prefix + ":{order_id}"
        else:
            options["waive"] = {"idempotency": "benchmark task"}

        def run(order_id: int) -> None:
            return None

        run.__name__ = run.__qualname__ = name.rsplit(".", 1)[-1]
        app.task(base=ReliableTask, shared=False, name=name, **options)(run)
    app.finalize()
    return app


# --------------------------------------------------------------------------- serving


@contextlib.contextmanager
def served(app: Celery) -> Iterator[str]:
    """The web view on uvicorn, in a thread of this process, on a free loopback port."""
    import uvicorn

    from celery_reliable.web import create_app

    port = servers.free_port()
    config = uvicorn.Config(
        create_app(app),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Page:
    name: str
    path: str
    #: What the page must contain, and how to count the rows it shows.
    marker: str
    rows: str | None = None
    shown: int = -1
    ms: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.ms)

    @property
    def p95(self) -> float:
        return statistics.quantiles(self.ms, n=20, method="inclusive")[18]


DEAD_ROW = r'<tr id="dead-\d+">'
RECEIPT_ROW = r'<td class="mono">'
LOCK_ROW = r'<td class="mono">'


def cursor(task_name: str, key: str) -> str:
    """A ``/receipts?after=`` cursor, as the page makes it."""
    return base64.urlsafe_b64encode(json.dumps([task_name, key]).encode()).decode()


def pages(url: str) -> list[Page]:
    """The pages to time, their parameters taken from the data."""
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            one = connection.execute
            column = dead_letters.c
            oldest = one(sa.select(sa.func.min(column.id))).scalar_one()
            newest = one(sa.select(sa.func.max(column.id))).scalar_one()
            detail = one(
                sa.select(column.id)
                .where(column.outcome == "exhausted", column.id >= (oldest + newest) // 2)
                .order_by(column.id)
                .limit(1)
            ).scalar_one()
            middle = TASK_NAMES[len(TASKS) // 2]
            keys = receipts.c
            held = one(sa.select(sa.func.count()).where(keys.task_name == middle)).scalar_one()
            mid_key = one(
                sa.select(keys.key)
                .where(keys.task_name == middle)
                .order_by(keys.key)
                .offset(held // 2)
                .limit(1)
            ).scalar_one()
    finally:
        engine.dispose()
    task, outcome = TASK_NAMES[6], "exhausted"
    dead, receipt = ('id="matching"', DEAD_ROW), ("succeeded", RECEIPT_ROW)
    return [
        Page("overview", "/?refresh=0", "Executions per minute"),
        Page("dead letters, first page", "/dead-letters", *dead),
        Page("dead letters, task + outcome", f"/dead-letters?task={task}&outcome={outcome}", *dead),
        Page(
            "dead letters, last 24 h not retried", "/dead-letters?period=24h&state=pending", *dead
        ),
        Page(f"dead letters, text search q={SEARCH}", f"/dead-letters?q={SEARCH}", *dead),
        Page("dead letters, deep page", f"/dead-letters?before={oldest + 200}", *dead),
        Page("dead letter detail", f"/dead-letters/{detail}", "Traceback"),
        Page("receipts, first page", "/receipts", *receipt),
        Page("receipts, state=abandoned", "/receipts?state=abandoned", "abandoned", RECEIPT_ROW),
        Page("receipts, task", f"/receipts?task={TASK_NAMES[0]}", *receipt),
        Page(
            "receipts, task + key prefix",
            f"/receipts?task={TASK_NAMES[0]}&key=charge:1234",
            *receipt,
        ),
        Page(
            "receipts, deep page (after=)", f"/receipts?after={cursor(middle, mid_key)}", *receipt
        ),
        Page("locks", "/locks", "Unique locks", LOCK_ROW),
        Page("gates", "/gates", "gate"),
    ]


def get(base: str, path: str) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(base + path, timeout=60) as answer:
        body = answer.read()
        status = answer.status
    elapsed = (time.perf_counter() - started) * 1000
    if status != 200:
        raise RuntimeError(f"{path}: HTTP {status}")
    return elapsed, body.decode()


def measure(base: str, found: list[Page], warmup: int, requests: int) -> None:
    for page in found:
        for _ in range(warmup):
            _, text = get(base, page.path)
        if page.marker not in text or '<p class="error">' in text or "unavailable" in text:
            raise RuntimeError(f"{page.path}: not the page expected:\n{text[:2000]}")
        page.shown = len(re.findall(page.rows, text)) if page.rows else -1
    for round_ in range(requests):
        for page in found if round_ % 2 == 0 else found[::-1]:
            page.ms.append(get(base, page.path)[0])


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    db: str
    version: str
    counts: Counts
    fill_seconds: dict[str, float]
    pages: list[Page]


def run_one(db: str, url: str, broker: str, args: argparse.Namespace, version: str) -> Run:
    counts = Counts(args.dead_letters, args.receipts, args.locks, args.history_days)
    engine = create_store_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()
    console.print(f"  {db}: filling ...")
    now = utcnow()
    seconds = fill(url, counts, now)
    found = pages(url)
    app = bench_app(broker, url)
    console.print(
        f"  {db}: {args.warmup} warm-up + {args.requests} requests on each of {len(found)} pages"
    )
    with served(app) as base:
        measure(base, found, args.warmup, args.requests)
    forget_store(app)
    for page in found:
        console.print(f"    {page.name:<40} median {page.median:7.1f} ms  p95 {page.p95:7.1f} ms")
    return Run(db, version, counts, seconds, found)


def sqlite_run(broker: str, args: argparse.Namespace, tmp: Path) -> Run:
    console.print(f"[bold]SQLite {sqlite3.sqlite_version}[/] (a file in {tmp})")
    url = f"sqlite:///{tmp}/store.sqlite3"
    return run_one("SQLite", url, broker, args, sqlite3.sqlite_version)


def postgres_run(broker: str, args: argparse.Namespace, tmp: Path) -> Run:
    console.print(
        "[bold]PostgreSQL[/]: starting a throw-away server (tests/support/servers.py) ..."
    )
    with postgres_server(tmp) as url:
        admin = sa.create_engine(url)
        try:
            with admin.connect() as connection:
                version = str(connection.exec_driver_sql("SHOW server_version").scalar())
        finally:
            admin.dispose()
        console.print(f"[bold]PostgreSQL {version}[/]")
        return run_one("PostgreSQL", url, broker, args, version)


def markdown(runs: list[Run], args: argparse.Namespace) -> str:
    heading = ["page", "path"]
    for run in runs:
        heading += [f"{run.db} median ms", f"{run.db} p95 ms"]
    heading.append("rows shown")
    lines = ["| " + " | ".join(heading) + " |", "|" + "---|" * 2 + "---:|" * (len(heading) - 2)]
    for number, page in enumerate(runs[0].pages):
        path = page.path if len(page.path) <= 48 else page.path[:45] + "..."
        cells = [page.name, f"`{path}`"]
        for run in runs:
            same = run.pages[number]
            cells += [f"{same.median:.1f}", f"{same.p95:.1f}"]
        shown = {run.pages[number].shown for run in runs}
        cells.append("/".join(str(s) for s in sorted(shown)) if page.rows else "-")
        lines.append("| " + " | ".join(cells) + " |")
    counts = runs[0].counts
    lines.append("")
    lines.append(
        f"Store: {counts.dead_letters:,} dead letters ({counts.dead_retried:,} retried), "
        f"{counts.receipts:,} receipts ({counts.receipts_in_progress:,} in progress, of "
        f"which {counts.receipts_abandoned:,} abandoned), {counts.locks:,} unique locks, "
        f"{counts.history:,} outcome-history rows ({len(TASKS)} tasks, "
        f"{counts.history_days * 24} h). "
        + "; ".join(f"{run.db} {run.version}" for run in runs)
        + f". {args.warmup} warm-up + {args.requests} timed requests per page."
    )
    return "\n".join(lines)


def as_json(runs: list[Run], args: argparse.Namespace, seconds: float) -> str:
    return json.dumps(
        {
            "benchmark": "celery_reliable web view pages",
            "requests": args.requests,
            "warmup": args.warmup,
            "seconds": round(seconds, 1),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "runs": [
                {
                    "db": run.db,
                    "version": run.version,
                    "counts": vars(run.counts),
                    "fill_seconds": {k: round(v, 2) for k, v in run.fill_seconds.items()},
                    "pages": [
                        {
                            "name": page.name,
                            "path": page.path,
                            "rows_shown": page.shown,
                            "median_ms": round(page.median, 2),
                            "p95_ms": round(page.p95, 2),
                            "ms": [round(ms, 2) for ms in page.ms],
                        }
                        for page in run.pages
                    ],
                }
                for run in runs
            ],
        },
        indent=2,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.web_pages", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dead-letters", type=int, default=100_000)
    parser.add_argument("--receipts", type=int, default=1_000_000)
    parser.add_argument("--locks", type=int, default=5_000)
    parser.add_argument(
        "--history-days", type=int, default=1, help="days of outcome history (1; kept: 7)"
    )
    parser.add_argument("--requests", type=int, default=20, help="timed requests per page")
    parser.add_argument("--warmup", type=int, default=3, help="untimed requests per page")
    parser.add_argument("--db", default="sqlite,postgresql", help="sqlite,postgresql")
    parser.add_argument("--json", type=Path, default=ROOT / ".cache" / "bench-web-pages.json")
    args = parser.parse_args(argv)
    wanted = [d.strip() for d in args.db.split(",") if d.strip()]
    if not wanted or set(wanted) - {"sqlite", "postgresql"}:
        parser.error(f"--db: sqlite and/or postgresql, not {args.db!r}")
    if args.requests < 2 or args.warmup < 1:
        parser.error("--requests: at least 2; --warmup: at least 1")
    started = time.perf_counter()
    runs: list[Run] = []
    runners: dict[str, Callable[[str, argparse.Namespace, Path], Run]] = {
        "sqlite": sqlite_run,
        "postgresql": postgres_run,
    }
    with (
        servers.redis_server() as redis_url,
        tempfile.TemporaryDirectory(prefix="reliable-bench-web-") as tmp,
    ):
        broker = f"{redis_url}/0"
        # Messages waiting, so that the overview's queue depths are not all zero.
        client = redis.Redis.from_url(broker)
        for depth, queue in enumerate(QUEUES):
            client.lpush(queue, *[b"{}"] * (100 * (depth + 1)))
        client.close()
        for db in wanted:
            runs.append(runners[db](broker, args, Path(tmp)))
    seconds = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(as_json(runs, args, seconds) + "\n")
    console.print(f"run took {seconds:.0f} s; figures in {args.json}")
    print(markdown(runs, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
