"""The store in Django's database (``reliable_database_url = "django"``), with the
example shop's real ``manage.py migrate`` and a real prefork ``celery -A shop worker``.

The exactly-once claim for Django ORM writes, under the same SIGKILLs as the
SQLAlchemy path (test_crash.py): a charge killed before its effect is taken over and
written once; killed after ``atomic()`` committed, the redelivery is a DUPLICATE; a
claim lost to another execution rolls the ORM writes back. A step's cursor commits
with an item's ORM writes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from celery_reliable.results import wait_for_outcome
from tests.integration.test_crash import kill_when_ready
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.workers import ROOT, WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

EXAMPLE = ROOT / "examples" / "django_app"
STORE_TABLES = {
    "reliable_receipts",
    "reliable_dead_letters",
    "reliable_unique_locks",
    "reliable_outcome_history",
    "reliable_alembic_version",
}


def as_database_url(store_url: str) -> str:
    """The DATABASE_URL a Django project has for the same database."""
    return store_url.replace("postgresql+psycopg://", "postgres://", 1)


@pytest.fixture(scope="module")
def shop_env(
    module_store_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.support.apps.django_crash.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)]),
        "DATABASE_URL": as_database_url(module_store_url),
        "REDIS_URL": new_redis_db(redis_url),
        "SHOP_DATA_DIR": str(tmp_path_factory.mktemp("shop")),
    }


def manage(env: dict[str, str], *args: str) -> str:
    """``manage.py`` of the example (run from here: the example's own ``tests`` package
    would hide this suite's, where the test settings are)."""
    return python(env, "-m", "django", *args)


def python(env: dict[str, str], *args: str) -> str:
    """The project's Python with the shop's environment; its output, if it exits 0."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def tables(store_url: str) -> set[str]:
    engine = sa.create_engine(store_url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def migrated(shop_env: dict[str, str], module_store_url: str) -> str:
    out = manage(shop_env, "migrate", "--no-input")
    assert "Applying celery_reliable.0001_store... OK" in out, out
    assert tables(module_store_url) >= STORE_TABLES
    return module_store_url


def test_manage_py_migrate_creates_and_drops_the_store_tables(
    shop_env: dict[str, str], migrated: str
) -> None:
    manage(shop_env, "migrate", "celery_reliable", "zero", "--no-input")
    assert not (STORE_TABLES - {"reliable_alembic_version"}) & tables(migrated)
    manage(shop_env, "migrate", "--no-input")
    assert tables(migrated) >= STORE_TABLES


@pytest.fixture(scope="module")
def worker(shop_env: dict[str, str], migrated: str) -> Iterator[WorkerProcess]:
    with celery_worker("shop", shop_env, concurrency=2) as process:
        yield process


@pytest.fixture(scope="module")
def client(shop_env: dict[str, str]) -> Celery:
    """Publishes by name, as the shop's web process would."""
    url = shop_env["REDIS_URL"]
    return Celery("shop-client", broker=url, backend=url, set_as_current=False)


def new_order(store_url: str) -> int:
    engine = sa.create_engine(store_url)
    try:
        with engine.begin() as connection:
            return int(
                connection.execute(
                    sa.text(
                        "INSERT INTO orders_order (email, sku, amount_cents, status, created_at)"
                        " VALUES ('ada@example.com', 'tea', 1, 'pending', CURRENT_TIMESTAMP)"
                        " RETURNING id"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def payments(store_url: str, order_id: int) -> int:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sa.text("SELECT count(*) FROM orders_payment WHERE order_id = :o"),
                    {"o": order_id},
                ).scalar_one()
            )
    finally:
        engine.dispose()


@pytest.mark.one_store_in_make_test("postgresql")
def test_killed_before_the_orm_write_is_taken_over_and_writes_once(
    client: Celery, shop_env: dict[str, str], worker: WorkerProcess, migrated: str
) -> None:
    broker = shop_env["REDIS_URL"]
    order = new_order(migrated)
    result = client.send_task("crash.django_charge", (order, "before-effect"))
    killed = kill_when_ready(broker, str(order), result)
    assert wait_for_outcome(result, timeout=60) == "SUCCESS", worker.output
    events = recorded(broker, result.id, 1)
    outcomes = [e["outcome"] for e in events]
    assert outcomes[-1] == "succeeded", outcomes
    assert set(outcomes[:-1]) <= {"snoozed"}, outcomes
    assert all(e["pid"] != killed for e in events)
    assert payments(migrated, order) == 1
    assert "took over idempotency key" in worker.output


def test_killed_after_the_orm_commit_is_a_duplicate(
    client: Celery, shop_env: dict[str, str], worker: WorkerProcess, migrated: str
) -> None:
    broker = shop_env["REDIS_URL"]
    order = new_order(migrated)
    result = client.send_task("crash.django_charge", (order, "after-effect"))
    kill_when_ready(broker, str(order), result)
    assert wait_for_outcome(result, timeout=60) == "SUCCESS", worker.output
    events = recorded(broker, result.id, 1)
    assert [e["outcome"] for e in events] == ["duplicate"], events
    assert payments(migrated, order) == 1
    assert worker.output.count(f"Task crash.django_charge[{result.id}] received") == 2
    assert redis.Redis.from_url(broker).llen(f"crash:started:{order}") == 1


@pytest.mark.one_store_in_make_test("sqlite")
def test_a_lost_claim_rolls_the_orm_write_back(
    client: Celery, shop_env: dict[str, str], worker: WorkerProcess, migrated: str
) -> None:
    broker = shop_env["REDIS_URL"]
    order = new_order(migrated)
    result = client.send_task("crash.django_charge", (order, "lease-lost"))
    assert wait_for_outcome(result, timeout=60) == "SUCCESS", worker.output
    events = recorded(broker, result.id, 2)
    outcomes = [e["outcome"] for e in events]
    # LeaseLost: the first execution's Payment rolled back with its receipt update and
    # it snoozed; a later one took the (abandoned) claim over and wrote it once.
    assert outcomes[0] == "snoozed" and "LeaseLost" in events[0]["reason"], events
    assert outcomes[-1] == "succeeded", outcomes
    assert payments(migrated, order) == 1


@pytest.mark.parametrize("block", ["reliable", "django"])
def test_a_step_s_cursor_commits_with_the_orm_writes(
    client: Celery, shop_env: dict[str, str], worker: WorkerProcess, migrated: str, block: str
) -> None:
    """``step.advance()`` in ``self.atomic()`` (and in Django's own
    ``transaction.atomic()``) is written with Django's cursor in Django's transaction:
    item 3's Payment and cursor roll back together, the retry starts at item 3, and
    each item is paid once."""
    broker = shop_env["REDIS_URL"]
    order = new_order(migrated)
    result = client.send_task("crash.django_steps", (order, 6, 3, block))
    assert result.get(timeout=60) == 6, worker.output
    events = recorded(broker, result.id, 2)
    assert [e["outcome"] for e in events] == ["retried", "succeeded"], events
    engine = sa.create_engine(migrated)
    try:
        with engine.connect() as connection:
            paid = connection.execute(
                sa.text("SELECT amount_cents FROM orders_payment WHERE order_id = :o"),
                {"o": order},
            ).scalars()
            assert sorted(paid) == [1, 2, 3, 4, 5, 6]
            step = connection.execute(
                sa.text(
                    'SELECT "cursor", advances, finished_at FROM reliable_steps '
                    "WHERE task_name = 'crash.django_steps' AND job = :job"
                ),
                {"job": f"pay-items:{order}"},
            ).one()
    finally:
        engine.dispose()
    # 2 advances committed by the first execution (the 3rd rolled back), 4 by the retry.
    assert (step.cursor, step.advances) == ("6", 6) and step.finished_at is not None


def test_the_example_app_passes_its_gates(shop_env: dict[str, str], migrated: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "shop", "reliable", "check"],
        cwd=EXAMPLE,
        env={**os.environ, **shop_env, "DJANGO_SETTINGS_MODULE": "shop.settings"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 tasks audited, 4 meet every gate" in done.stdout


ON_COMMIT_SCRIPT = """
import django
django.setup()
from celery.signals import before_task_publish
from django.db import transaction
from tests.support.apps.django_crash.tasks import note

published = []
before_task_publish.connect(
    lambda sender=None, headers=None, **_: published.append(headers["id"]), weak=False
)

class Rollback(Exception):
    pass

try:
    with transaction.atomic():
        note.apply_async_on_commit((1,), task_id="{rolled_back}")
        assert published == [], published
        raise Rollback()
except Rollback:
    pass
assert published == [], published
with transaction.atomic():
    note.apply_async_on_commit((2,), task_id="{committed}")
    note.delay_on_commit(3)
    assert published == [], "published before the commit"
assert published[0] == "{committed}" and len(published) == 2, published
print("published after the commit:", published[0])
"""


def test_delay_on_commit_publishes_after_the_commit_and_runs_with_its_outcome(
    shop_env: dict[str, str], worker: WorkerProcess
) -> None:
    """Django's fixup makes the app's task class DjangoTask; base=ReliableTask keeps its
    delay_on_commit / apply_async_on_commit (Celery's examples/django README uses them)."""
    rolled_back, committed = str(uuid.uuid4()), str(uuid.uuid4())
    script = ON_COMMIT_SCRIPT.replace("{rolled_back}", rolled_back).replace(
        "{committed}", committed
    )
    assert f"published after the commit: {committed}" in python(shop_env, "-c", script)
    broker = shop_env["REDIS_URL"]
    client = Celery("on-commit-client", broker=broker, backend=broker, set_as_current=False)
    result = client.AsyncResult(committed)
    assert result.get(timeout=60) == "noted 2", worker.output
    assert [e["outcome"] for e in recorded(broker, committed, 1)] == ["succeeded"]
