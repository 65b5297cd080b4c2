"""`make demo`: one ReliableTask driven into each outcome, on embedded defaults.

No server to install: the broker is kombu's SQLAlchemy transport on a SQLite file, the
result backend is Celery's database backend on another, and celery_reliable's store
(receipts, dead letters) is a third, all under ``examples/demo-data/``. A real Celery
worker runs in a thread of this process.

Run: ``make demo`` (or ``python examples/demo.py``).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.contrib.testing.worker import start_worker
from rich.console import Console
from rich.table import Table

from celery_reliable import (
    Cancel,
    Outcome,
    ReliableTask,
    Snooze,
    cancel_on,
    discard_on,
    retry_on,
)
from celery_reliable.backoff import exponential
from celery_reliable.results import wait_for_outcome
from celery_reliable.signals import task_outcome
from celery_reliable.store import store_for

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "demo-data"


class EmailTimeout(Exception):
    """Transient: the mail server did not answer."""


class InvalidEmail(Exception):
    """Permanent: retrying will not fix the address."""


class OrderNotFound(Exception):
    """Expected: the order was deleted before the job ran."""


def make_app() -> Celery:
    DATA.mkdir(parents=True, exist_ok=True)
    app = Celery(
        "shop",
        broker=f"sqla+sqlite:///{DATA / 'broker.sqlite3'}",
        backend=f"db+sqlite:///{DATA / 'results.sqlite3'}",
        set_as_current=False,
    )
    app.conf.update(
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        reliable_database_url=f"sqlite:///{DATA / 'reliable.sqlite3'}",
    )
    return app


app = make_app()
_attempts: dict[str, int] = defaultdict(int)
_lock = threading.Lock()


def count(key: str) -> int:
    with _lock:
        _attempts[key] += 1
        return _attempts[key]


class GatewayTimeout(Exception):
    """Transient: the payment gateway did not answer."""


#: Production settings for tasks that are safe to run twice: a message is acknowledged
#: when its execution ends, so a worker that dies mid-task hands it to another.
SAFE_DELIVERY = {"acks_late": True, "reject_on_worker_lost": True}
#: The demo runs without a StatsD server: its tasks waive the metrics gate, and
#: `celery reliable check` shows why.
NO_STATSD = {"metrics": "the demo runs without a StatsD server"}


@app.task(
    base=ReliableTask,
    bind=True,
    name="shop.send_order_confirmation",
    timeout=30,
    idempotency_key="order-confirmation:{order_id}",
    waive=NO_STATSD,
    **SAFE_DELIVERY,
)
@retry_on(EmailTimeout, ConnectionError, wait=exponential(factor=0.1, cap=1), attempts=3)
@discard_on(InvalidEmail)
@cancel_on(OrderNotFound)
def send_order_confirmation(self: ReliableTask, order_id: int, scenario: str) -> str:
    n = count(f"{scenario}:{order_id}")
    if scenario == "flaky" and n == 1:
        raise EmailTimeout("smtp.example.com did not answer in 10s")
    if scenario == "down":
        raise EmailTimeout("smtp.example.com did not answer in 10s")
    if scenario == "bad-address":
        raise InvalidEmail("'bob@' is not an address")
    if scenario == "deleted":
        raise OrderNotFound(f"order {order_id} is gone")
    if scenario == "refunded":
        return Cancel("order was refunded before the mail went out")  # type: ignore[return-value]
    if scenario == "warehouse-busy" and n == 1:
        return Snooze(0.2, "warehouse system busy, try again shortly")  # type: ignore[return-value]
    if scenario == "bug":
        raise KeyError("customer_name")
    return f"mail sent for order {order_id}"


charges = sa.Table(
    "charges",
    sa.MetaData(),
    sa.Column("order_id", sa.Integer, primary_key=True),
    sa.Column("amount_cents", sa.Integer, nullable=False),
)


@app.task(
    base=ReliableTask,
    bind=True,
    name="shop.charge_order",
    timeout=30,
    idempotency_key="charge:{order_id}",
    waive=NO_STATSD,
    **SAFE_DELIVERY,
)
@retry_on(GatewayTimeout, wait=exponential(factor=0.1, cap=1), attempts=3)
def charge_order(self: ReliableTask, order_id: int, amount_cents: int) -> dict[str, int]:
    with self.atomic() as session:  # the charge and its receipt commit together
        session.execute(charges.insert().values(order_id=order_id, amount_cents=amount_cents))
    return {"order_id": order_id, "charged": amount_cents}


SCENARIOS = [
    ("ok", "a normal run"),
    ("flaky", "fails once with EmailTimeout, then succeeds"),
    ("warehouse-busy", "snoozes once, then succeeds"),
    ("deleted", "OrderNotFound (cancel_on)"),
    ("refunded", "returns Cancel(...)"),
    ("bad-address", "InvalidEmail (discard_on)"),
    ("down", "EmailTimeout every time: 3 attempts"),
    ("bug", "KeyError nobody declared"),
]


def print_runs(console: Console, runs: list[Any], seen: dict[str, Any]) -> set[Outcome]:
    table = Table(title="One execution, one outcome")
    for column in ("scenario", "executions (outcome@attempt)", "final state", "reason"):
        table.add_column(column)
    covered: set[Outcome] = set()
    for scenario, text, result in runs:
        history = seen[result.id]
        covered.update(outcome for outcome, _, _ in history)
        chain_text = " → ".join(f"{o.value}@{a}" for o, a, _ in history)
        table.add_row(f"{scenario}\n[dim]{text}[/]", chain_text, result.state, history[-1][2])
    console.print(table)
    summary = Table(title="Outcomes seen")
    for column in ("outcome", "Celery state", "seen"):
        summary.add_column(column)
    for outcome in Outcome:
        summary.add_row(outcome.value, outcome.state, "yes" if outcome in covered else "NO")
    console.print(summary)
    return covered


def print_store(console: Console) -> None:
    store = store_for(app)
    assert store is not None
    with store.engine.connect() as connection:
        charged = connection.execute(sa.select(sa.func.count()).select_from(charges)).scalar()
    console.print(f"charges written for order 77: {charged} (two runs, one effect)")
    letters = Table(title="Dead letters (celery -A examples.demo reliable dead list)")
    for column in ("id", "outcome", "attempts", "reason"):
        letters.add_column(column)
    for letter in reversed(store.dead_letters.list()):
        letters.add_row(str(letter.id), letter.outcome, str(letter.attempts), letter.reason)
    console.print(letters)


def main() -> int:
    # Our one line per execution end, and none of Celery's own tracebacks: the
    # failures below are the point of the demo.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("  %(levelname)-7s %(message)s"))
    outcome_log = logging.getLogger("celery_reliable.outcome")
    outcome_log.addHandler(handler)
    outcome_log.setLevel(logging.INFO)
    outcome_log.propagate = False
    console = Console()
    seen: dict[str, list[tuple[Outcome, int, str]]] = defaultdict(list)
    seen_lock = threading.Lock()

    def record(sender: Any = None, **fields: Any) -> None:
        with seen_lock:
            seen[fields["task_id"]].append((fields["outcome"], fields["attempt"], fields["reason"]))

    task_outcome.connect(record, weak=False)
    for old in DATA.glob("*.sqlite3*"):  # each run starts empty
        old.unlink()
    store = store_for(app)
    assert store is not None
    store.ensure_schema()  # SQLite: the store creates its own schema
    charges.metadata.create_all(store.engine)
    console.print(f"[bold]celery_reliable demo[/] — broker and results in {DATA}")
    console.print("[dim]log lines from the celery_reliable.outcome logger:[/]")
    with start_worker(
        app,
        pool="threads",
        concurrency=4,
        perform_ping_check=False,
        loglevel="CRITICAL",
        shutdown_timeout=30,
    ):
        runs = [
            (scenario, text, send_order_confirmation.apply_async((1000 + i, scenario)))
            for i, (scenario, text) in enumerate(SCENARIOS)
        ]
        # The same charge twice (a double click): the second finds the receipt.
        first_charge = charge_order.apply_async((77, 4999))
        wait_for_outcome(first_charge, timeout=60)
        second_charge = charge_order.apply_async((77, 4999))
        runs += [
            ("charge", "charge_order(77): the first time", first_charge),
            ("charge again", "the same key: skipped, same result", second_charge),
        ]
        for _, _, result in runs:
            wait_for_outcome(result, timeout=60)

    covered = print_runs(console, runs, seen)
    print_store(console)
    missing = [o.value for o in Outcome if o not in covered]
    if missing:
        console.print(f"[red]missing outcomes: {missing}[/]")
        return 1
    # The worker wrote its outcome history when it stopped: the real command line
    # audits the tasks and reports on one, as a CI step or a pull request would.
    for command in (["check"], ["report", "shop.send_order_confirmation"]):
        console.rule(f"celery -A examples.demo reliable {' '.join(command)}")
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "examples.demo", "reliable", *command],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        if done.returncode != 0:
            console.print(f"[red]reliable {command[0]} exited {done.returncode}[/]")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
