"""`make demo`: the example shop under a real worker, with the failures a shop meets.

On embedded defaults (SQLite files and kombu's SQLAlchemy broker under ``data/demo/``;
no server to install), or on the servers ``DATABASE_URL`` and ``REDIS_URL`` name. It
migrates the shop, places 42 orders (customers whose gateway call times out or is
rate-limited once, declined cards, bad and unreachable addresses, an order cancelled
before its jobs run, an unknown SKU, and one order submitted six times), starts a real
``celery -A shop worker`` (prefork), waits until every job has ended, stops it, and
prints what happened: outcomes per task, the effects counted (no order is charged
twice), the dead letters and the gates through the CLI, and the StatsD lines a local
listener received. Exit status 1 if an order was charged twice or a job never ended.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("SHOP_DATA_DIR", HERE / "data" / "demo"))
WAREHOUSE_BUSY_SECONDS = 20
DUPLICATE_SUBMISSIONS = 5


def prepare_environment(statsd_port: int) -> dict[str, str]:
    if "DATABASE_URL" not in os.environ:
        shutil.rmtree(DATA, ignore_errors=True)  # a fresh embedded shop each run
    DATA.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(DATA / "mail", ignore_errors=True)
    env = {
        "DJANGO_SETTINGS_MODULE": "shop.settings",
        "SHOP_DATA_DIR": str(DATA),
        "EMAIL_BACKEND": "shop.demo_mail.DemoSMTPBackend",
        "EMAIL_FILE_PATH": str(DATA / "mail"),
        "STATSD_HOST": "127.0.0.1",
        "STATSD_PORT": str(statsd_port),
        "SHOP_WAREHOUSE_BUSY_UNTIL": str(time.time() + WAREHOUSE_BUSY_SECONDS),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    os.environ.update(env)
    return env


# (how many, email, sku): what the 42 customers do.
CUSTOMERS = [
    (24, "customer{n}@example.com", "tea cup pot"),
    (4, "slow{n}@example.com", "tea"),  # the gateway times out once: retried
    (3, "busy{n}@example.com", "cup"),  # rate-limited once, Retry-After 2 s: retried
    (3, "declined{n}@example.com", "pot"),  # a declined card: discarded
    (2, "flaky{n}@example.com", "tea"),  # the mail server refuses once: retried
    (2, "not an address {n}", "cup"),  # no mail can reach it: discarded
    (1, "nobody@blackhole.example", "tea"),  # mail never answers: exhausted
    (2, "changed-mind{n}@example.com", "pot"),  # deleted before its jobs run: cancelled
    (1, "collector@example.com", "kettle"),  # a SKU the warehouse does not know: failed
]


def place_orders() -> tuple[list[str], list[int]]:
    """Place the orders; returns the ids of the jobs published and the cancelled orders."""
    from celery import signals
    from orders.models import Order
    from orders.services import place_order
    from orders.tasks import charge_payment

    published: list[str] = []

    def keep(headers: dict | None = None, **_: object) -> None:
        if headers:
            published.append(headers["id"])

    signals.before_task_publish.connect(keep, weak=False, dispatch_uid="demo")
    cancelled = []
    for count, email, skus in CUSTOMERS:
        for n in range(count):
            sku = skus.split()[n % len(skus.split())]
            order = place_order(email=email.format(n=n), sku=sku, amount_cents=500 + n)
            if email.startswith("changed-mind"):
                cancelled.append(order.pk)
    # A customer double-clicks "Pay", and a webhook is retried: the same charge 6 times.
    double_clicker = place_order(email="impatient@example.com", sku="tea", amount_cents=900)
    for _ in range(DUPLICATE_SUBMISSIONS):
        charge_payment.delay(double_clicker.pk)
    Order.objects.filter(pk__in=cancelled).delete()
    signals.before_task_publish.disconnect(dispatch_uid="demo")
    return published, cancelled


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    log = open(DATA / "worker.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "shop", "worker", "-P", "prefork", "-c", "2",
         "--loglevel=INFO", "--without-gossip", "--without-mingle", "-n", "demo@%h"],
        cwd=HERE, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: the outcome history is written
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(5)


def wait_until_done(job_ids: list[str], timeout: float = 90) -> list[str]:
    """Wait until every published job has ended (and the inventory syncs the charges
    published); returns the ids of those that did not."""
    from celery.result import AsyncResult
    from orders.models import Stock
    from shop.celery import app

    from celery_reliable.results import TERMINAL_STATES

    deadline = time.monotonic() + timeout
    waiting = list(job_ids)
    while time.monotonic() < deadline:
        waiting = [i for i in waiting if AsyncResult(i, app=app).state not in TERMINAL_STATES]
        if not waiting and Stock.objects.count() >= 3:
            time.sleep(2)  # the sync of the unknown SKU, published with the last charges
            return []
        time.sleep(0.5)
    return waiting


def celery_cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "shop", "reliable", *args],
        cwd=HERE, env=os.environ.copy(), capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    return (done.stdout + done.stderr).rstrip()


def main() -> int:
    started = time.monotonic()
    sys.path.insert(0, str(HERE))
    from celery_reliable.testing.statsd import StatsdLines

    listener = StatsdLines()
    env = prepare_environment(listener.port)
    import django

    django.setup()
    from django.core.management import call_command
    from rich.console import Console

    console = Console(width=120)
    console.rule("the example shop: migrate")
    call_command("migrate", verbosity=0)
    if "DATABASE_URL" in os.environ:
        call_command("flush", interactive=False, verbosity=0)
        empty_store()

    orders_placed = sum(c for c, _, _ in CUSTOMERS) + 1
    published, cancelled = place_orders()
    console.print(
        f"{orders_placed} orders placed, {len(cancelled)} of them cancelled before any job ran; "
        f"{len(published)} jobs published (one charge submitted "
        f"{DUPLICATE_SUBMISSIONS + 1} times); the warehouse is busy for the first "
        f"{WAREHOUSE_BUSY_SECONDS} s"
    )
    worker = start_worker(env)
    try:
        console.print("a real worker runs them: celery -A shop worker -P prefork -c 2 ...")
        unfinished = wait_until_done(published)
    finally:
        stop_worker(worker)
    console.print(f"all jobs ended; worker stopped after {time.monotonic() - started:.0f} s")

    outcome_table(console)
    charged_twice = effects_table(console, orders_placed)
    console.rule("celery -A shop reliable dead list")
    print(celery_cli("dead", "list"), flush=True)  # whole lines, as the CLI wrote them
    statsd_table(console, listener)
    listener.close()
    console.rule("celery -A shop reliable check")
    print(celery_cli("check"), flush=True)

    problems = []
    if unfinished:
        problems.append(f"{len(unfinished)} jobs never ended (see {DATA / 'worker.log'})")
    if charged_twice:
        problems.append(f"{charged_twice} orders were charged twice")
    for problem in problems:
        console.print(f"[bold red]FAILED:[/] {problem}")
    console.print(f"demo done in {time.monotonic() - started:.0f} s")
    console.print("see it in the web view: make web, then http://127.0.0.1:5580/")
    return 1 if problems else 0


def empty_store() -> None:
    from shop.celery import app
    from sqlalchemy import delete

    from celery_reliable.store import store_for
    from celery_reliable.store.schema import metadata

    store = store_for(app)
    assert store is not None
    with store.engine.begin() as connection:
        for table in metadata.sorted_tables:
            connection.execute(delete(table))


def outcome_table(console: object) -> None:
    from rich.table import Table
    from shop.celery import app

    from celery_reliable import Outcome
    from celery_reliable.store import store_for

    store = store_for(app)
    assert store is not None
    table = Table(title="Outcomes per task (the outcome history the worker wrote)")
    table.add_column("task (orders.tasks.)")
    for outcome in Outcome:
        table.add_column(outcome.value, justify="right")
    for name in sorted(n for n in app.tasks if n.startswith("orders.")):
        counts = store.history.summary(name).counts
        if counts:
            short = name.removeprefix("orders.tasks.")
            table.add_row(short, *(str(counts.get(o.value, 0) or "") for o in Outcome))
    console.print(table)  # type: ignore[attr-defined]


def effects_table(console: object, orders_placed: int) -> int:
    from django.db.models import Count
    from orders.models import GatewayCall, Order, Payment, Stock
    from rich.table import Table

    charged_twice = Payment.objects.values("order").annotate(n=Count("id")).filter(n__gt=1).count()
    mails = sum(
        p.read_text(errors="replace").count("Subject: Order #")
        for p in (DATA / "mail").glob("*.log")
    )
    table = Table(title="Effects")
    table.add_column("effect")
    table.add_column("count", justify="right")
    table.add_row("orders placed", str(orders_placed))
    table.add_row("orders cancelled before their jobs ran", str(2))
    table.add_row("orders paid", str(Order.objects.filter(status=Order.PAID).count()))
    table.add_row("payments recorded", str(Payment.objects.count()))
    table.add_row("[bold]orders charged twice[/]", f"[bold]{charged_twice}[/]")
    table.add_row("gateway calls (retries included)", str(GatewayCall.objects.count()))
    table.add_row("confirmation mails sent", str(mails))
    table.add_row("SKUs synced from the warehouse", str(Stock.objects.count()))
    console.print(table)  # type: ignore[attr-defined]
    return charged_twice


def statsd_table(console: object, listener: object) -> None:
    from rich.table import Table

    lines = listener.lines  # type: ignore[attr-defined]
    kinds = Counter(line.split(":", 1)[0].rsplit(".", 1)[-1] for line in lines)
    table = Table(title=f"StatsD: {len(lines)} lines received on UDP {listener.port}")  # type: ignore[attr-defined]
    table.add_column("metric")
    table.add_column("lines", justify="right")
    table.add_column("example")
    for kind, n in sorted(kinds.items()):
        example = next(x for x in lines if x.split(":", 1)[0].endswith("." + kind))
        table.add_row(kind, str(n), example)
    console.print(table)  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main())
