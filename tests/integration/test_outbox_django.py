"""The outbox in a Django project whose store is Django's database (the example shop,
``manage.py migrate``, a real prefork ``celery -A shop worker`` running the relay, a
SQLite and a PostgreSQL database).

With ``CELERY_RELIABLE_OUTBOX = True``, ``.delay()`` inside ``transaction.atomic()``
is written to the outbox on Django's connection: it runs once if the block commits,
never if it rolls back; ``publish_in(transaction, sig)`` does the same explicitly;
outside a transaction ``.delay()`` publishes as usual (no outbox row, no receipt for
its task id).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from celery import Celery

from tests.integration.test_django import EXAMPLE, as_database_url, manage, python
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.workers import ROOT, WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]


@pytest.fixture(scope="module")
def shop_env(
    module_store_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": "tests.support.apps.django_outbox.settings",
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)]),
        "DATABASE_URL": as_database_url(module_store_url),
        "REDIS_URL": new_redis_db(redis_url),
        "SHOP_DATA_DIR": str(tmp_path_factory.mktemp("shop")),
    }


@pytest.fixture(scope="module")
def migrated(shop_env: dict[str, str], module_store_url: str) -> str:
    out = manage(shop_env, "migrate", "--no-input")
    assert "Applying celery_reliable.0008_outbox... OK" in out, out
    return module_store_url


@pytest.fixture(scope="module")
def worker(shop_env: dict[str, str], migrated: str) -> Iterator[WorkerProcess]:
    with celery_worker("shop", shop_env, concurrency=2) as process:
        yield process


SCRIPT = """
import django
django.setup()
from django.db import transaction
from celery_reliable.outbox import publish_in
from tests.support.apps.django_crash.tasks import note

class Rollback(Exception):
    pass

try:
    with transaction.atomic():
        rolled_back = note.delay(1)
        raise Rollback()
except Rollback:
    pass
with transaction.atomic():
    committed = note.delay(2)
    explicit = publish_in(transaction, note.s(3))
direct = note.delay(4)
print(rolled_back.id, committed.id, explicit.id, direct.id)
"""


def test_delay_inside_atomic_goes_through_the_outbox(
    shop_env: dict[str, str], worker: WorkerProcess, migrated: str
) -> None:
    rolled_back, committed, explicit, direct = python(shop_env, "-c", SCRIPT).split()
    broker = shop_env["REDIS_URL"]
    client = Celery("outbox-client", broker=broker, backend=broker, set_as_current=False)
    try:
        for task_id, n in ((committed, 2), (explicit, 3), (direct, 4)):
            assert client.AsyncResult(task_id).get(timeout=60) == f"noted {n}", worker.output
            assert [e["outcome"] for e in recorded(broker, task_id, 1)] == ["succeeded"]
        # Published after the rolled-back one, and run: had it been sent, it had run.
        assert client.AsyncResult(rolled_back).state == "PENDING"
    finally:
        client.close()
    engine = sa.create_engine(migrated)
    try:
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM reliable_outbox")).scalar() == 0
            claimed = set(
                connection.execute(
                    sa.text(
                        'SELECT "key" FROM reliable_receipts '
                        "WHERE task_name = 'crash.django_note'"
                    )
                ).scalars()
            )
    finally:
        engine.dispose()
    # The outbox's messages claimed their task ids; the direct one (and the rolled-back
    # one, never sent) did not.
    assert {committed, explicit} <= claimed
    assert not {direct, rolled_back} & claimed


BATCH_SCRIPT = """
import django
django.setup()
from django.db import transaction
from celery_reliable import Batch
from celery_reliable.outbox import publish_in
from tests.support.apps.django_crash.tasks import note

class Rollback(Exception):
    pass

with Batch(on_complete=note.s()) as batch:
    sent = note.delay(20)
    with transaction.atomic():
        committed = note.delay(21)
    try:
        with transaction.atomic():
            rolled_back = publish_in(transaction, note.s(22))
            raise Rollback()
    except Rollback:
        pass
print(batch.id, sent.id, committed.id, rolled_back.id)
"""


def test_a_batch_member_whose_atomic_block_rolled_back_is_not_one(
    shop_env: dict[str, str], worker: WorkerProcess, migrated: str
) -> None:
    """Members through the outbox (``.delay()`` inside ``atomic()``, ``publish_in``): the
    one whose block rolled back was never sent, and the batch completes without it."""
    batch_id, sent, committed, rolled_back = python(shop_env, "-c", BATCH_SCRIPT).split()
    broker = shop_env["REDIS_URL"]
    client = Celery("outbox-client", broker=broker, backend=broker, set_as_current=False)
    try:
        summary = client.AsyncResult(f"{batch_id}-on_complete").get(timeout=60)
        assert "'total': 2" in summary and "'succeeded': 2" in summary, worker.output
        for task_id in (sent, committed):
            assert [e["outcome"] for e in recorded(broker, task_id, 1)] == ["succeeded"]
        # Its batch's callback came after it would have: it was never sent.
        assert client.AsyncResult(rolled_back).state == "PENDING"
    finally:
        client.close()
    engine = sa.create_engine(migrated)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                sa.text("SELECT state, total, done FROM reliable_batches WHERE id = :id"),
                {"id": batch_id},
            ).one()
            members = set(
                connection.execute(
                    sa.text("SELECT task_id FROM reliable_batch_members WHERE batch_id = :id"),
                    {"id": batch_id},
                ).scalars()
            )
    finally:
        engine.dispose()
    assert tuple(row) == ("completed", 2, 2)
    assert members == {sent, committed}


INSIDE_SCRIPT = """
import django
django.setup()
from django.db import transaction
from celery_reliable import Batch
from tests.support.apps.django_crash.tasks import note

class Rollback(Exception):
    pass

with transaction.atomic():
    with Batch(on_complete=note.s()) as committed:
        note.delay(30)
        note.delay(31)
try:
    with transaction.atomic():
        with Batch(on_complete=note.s()) as rolled_back:
            rolled = note.delay(32)
        raise Rollback()
except Rollback:
    pass
print(committed.id, rolled_back.id, rolled.id)
"""


# SQLite: Django's "transaction_mode": "IMMEDIATE" holds the write lock from the
# block's start, which opening a batch inside it would wait for (docs/batches.md).
@pytest.mark.only_store("postgresql")
def test_a_batch_block_inside_atomic_is_sealed_with_its_transaction(
    shop_env: dict[str, str], worker: WorkerProcess, migrated: str
) -> None:
    """Committed: the seal and the members commit together, and the batch completes.
    Rolled back: its member was never sent, and the batch is sealed again without it
    (``django/rollback.py``): no member, completed at once."""
    committed, rolled_back, rolled = python(shop_env, "-c", INSIDE_SCRIPT).split()
    broker = shop_env["REDIS_URL"]
    client = Celery("outbox-client", broker=broker, backend=broker, set_as_current=False)
    try:
        summary = client.AsyncResult(f"{committed}-on_complete").get(timeout=60)
        assert "'total': 2" in summary and "'succeeded': 2" in summary, worker.output
        summary = client.AsyncResult(f"{rolled_back}-on_complete").get(timeout=60)
        assert "'total': 0" in summary, worker.output
        assert client.AsyncResult(rolled).state == "PENDING"
    finally:
        client.close()
    engine = sa.create_engine(migrated)
    try:
        with engine.connect() as connection:
            states = dict(
                connection.execute(
                    sa.text("SELECT id, state FROM reliable_batches WHERE id IN (:a, :b)"),
                    {"a": committed, "b": rolled_back},
                ).all()
            )
    finally:
        engine.dispose()
    assert states == {committed: "completed", rolled_back: "completed"}


ROLLBACK_SCRIPT = """
import django
from django.conf import settings

# Django's default DEFERRED transactions on SQLite: the shop's IMMEDIATE takes the write
# lock at BEGIN, which opening a batch inside atomic() would wait for (docs/batches.md).
settings.DATABASES["default"].get("OPTIONS", {}).pop("transaction_mode", None)
django.setup()
from django.db import connection, transaction
from celery_reliable import Batch
from celery_reliable.outbox import publish_in
from tests.support.apps.django_crash.tasks import note

class Rollback(Exception):
    pass

# The block exits inside atomic(), which then rolls back.
try:
    with transaction.atomic():
        with Batch(on_complete=note.s()) as rolled_back:
            lost = [publish_in(transaction, note.s(60))]
            sent = [note.delay(61)]
        raise Rollback()
except Rollback:
    pass
# Inside a savepoint that rolls back, in a transaction that commits, then in one that
# rolls back.
for outer_rolls_back in (False, True):
    try:
        with transaction.atomic():
            try:
                with transaction.atomic():
                    with Batch(on_complete=note.s()) as batch:
                        lost.append(publish_in(transaction, note.s(62)))
                        sent.append(note.delay(63))
                    raise Rollback()
            except Rollback:
                pass
            if outer_rolls_back:
                raise Rollback()
    except Rollback:
        pass
    if outer_rolls_back:
        savepoint_rolled_back = batch
    else:
        savepoint_committed = batch
# The connection closed inside atomic() (the database rolls back as it closes).
with transaction.atomic():
    with Batch(on_complete=note.s()) as closed:
        lost.append(publish_in(transaction, note.s(64)))
        sent.append(note.delay(65))
    connection.close()
# Autocommit off: transaction.rollback() after the atomic() block. (On SQLite, Django's
# atomic() commits there: its savepoint began the transaction, and its release ends it.
# So the rollback finds the batch sealed, with both members, and leaves it so.)
transaction.set_autocommit(False)
with transaction.atomic():
    with Batch(on_complete=note.s()) as manual:
        (sent if connection.vendor == "sqlite" else lost).append(
            publish_in(transaction, note.s(66))
        )
        sent.append(note.delay(67))
transaction.rollback()
transaction.set_autocommit(True)
# Committed: sealed in the transaction, with all its members.
with transaction.atomic():
    with Batch(on_complete=note.s()) as committed:
        sent.append(publish_in(transaction, note.s(68)))
        sent.append(note.delay(69))
batches = [rolled_back, savepoint_committed, savepoint_rolled_back, closed, manual, committed]
print(*(",".join(x.id for x in xs) for xs in (batches, sent, lost)))
"""


def test_a_batch_block_inside_atomic_that_rolls_back_is_sealed_with_the_members_sent(
    shop_env: dict[str, str], worker: WorkerProcess, migrated: str
) -> None:
    """The block exits inside ``atomic()`` with a member through the outbox and one
    sent directly (``.delay()`` without ``CELERY_RELIABLE_OUTBOX``); then the
    transaction rolls back, taking the seal with it. The batch is sealed again with
    the member sent: its callback fires once, with a total of 1. The same when the
    block exits inside a savepoint that rolls back, whether its transaction then
    commits or rolls back; when the connection closes inside ``atomic()``; and when
    ``transaction.rollback()`` ends it (autocommit off). A transaction that commits
    seals with both members."""
    env = {**shop_env, "DJANGO_SETTINGS_MODULE": "tests.support.apps.django_crash.settings"}
    ids, sent, lost = python(env, "-c", ROLLBACK_SCRIPT).split()
    # The last one committed; the one before it on SQLite too (see the script).
    expected = [1, 1, 1, 1, 2 if "sqlite" in migrated else 1, 2]
    totals = dict(zip(ids.split(","), expected, strict=True))
    broker = shop_env["REDIS_URL"]
    client = Celery("outbox-client", broker=broker, backend=broker, set_as_current=False)
    try:
        for batch_id, total in totals.items():
            summary = client.AsyncResult(f"{batch_id}-on_complete").get(timeout=60)
            assert f"'total': {total}" in summary, (summary, worker.output)
            assert f"'succeeded': {total}" in summary, (summary, worker.output)
        for task_id in sent.split(","):
            assert [e["outcome"] for e in recorded(broker, task_id, 1)] == ["succeeded"]
        # Each callback ran once (read once all of them ran).
        for batch_id in totals:
            outcomes = recorded(broker, f"{batch_id}-on_complete", 1)
            assert [e["outcome"] for e in outcomes] == ["succeeded"]
        # Their batches' callbacks came after they would have run: never sent.
        for task_id in lost.split(","):
            assert client.AsyncResult(task_id).state == "PENDING"
    finally:
        client.close()
    engine = sa.create_engine(migrated)
    try:
        with engine.connect() as connection:
            rows = {
                row.id: (row.state, row.total, row.done)
                for row in connection.execute(
                    sa.text("SELECT id, state, total, done FROM reliable_batches")
                )
            }
    finally:
        engine.dispose()
    assert {b: rows[b] for b in totals} == {b: ("completed", n, n) for b, n in totals.items()}


ABORTED_SCRIPT = """
import django
django.setup()
from django.db import connection, transaction
from celery_reliable import Batch
from celery_reliable.outbox import publish_in
from tests.support.apps.django_crash.tasks import note

try:
    with transaction.atomic():
        with Batch(on_complete=note.s()) as batch:
            note.delay(40)
            publish_in(transaction, note.s(41))
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1/0")
except Exception as exc:
    print(batch.id, type(exc).__name__)
"""


# PostgreSQL: an error aborts the transaction (SQLite's does not).
@pytest.mark.only_store("postgresql")
def test_a_batch_block_whose_error_aborted_its_atomic_block_raises_that_error(
    shop_env: dict[str, str], migrated: str
) -> None:
    """The block's statement failed inside ``atomic()``: its error is the one raised
    (before: the abandoned seal, written in the aborted transaction, raised instead),
    and the batch is abandoned."""
    batch_id, raised = python(shop_env, "-c", ABORTED_SCRIPT).split()
    assert raised == "DataError"
    engine = sa.create_engine(migrated)
    try:
        with engine.connect() as connection:
            state = connection.execute(
                sa.text("SELECT state FROM reliable_batches WHERE id = :id"), {"id": batch_id}
            ).scalar()
    finally:
        engine.dispose()
    assert state == "abandoned"
