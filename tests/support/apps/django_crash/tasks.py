"""A charge written with the Django ORM through ``self.atomic()``, SIGKILLed at a chosen
point (the crash tests of ``tests/integration/test_crash.py``, on Django's path), and
a stepped task whose cursor commits with the ORM writes of each item."""

from __future__ import annotations

import redis
from celery import shared_task
from django.conf import settings
from orders.models import Payment

from celery_reliable import ReliableTask, retry_on
from celery_reliable.backoff import fixed
from tests.support.apps.kill_points import started, wait_for_the_kill
from tests.support.outcomes import record_outcomes_to

record_outcomes_to(settings.REDIS_URL)
_redis = redis.Redis.from_url(settings.REDIS_URL)


# time_limit=8: the lease is 13 s, as in crash_app (see there for why). The soft limit
# is its own (the shop's task_soft_time_limit, 100 s, is above 8: Celery would refuse to
# publish the task again, for a snooze or a retry).
@shared_task(
    base=ReliableTask,
    bind=True,
    name="crash.django_charge",
    soft_time_limit=8,
    time_limit=8,
    idempotency_key="charge:{order_id}",
)
def charge(self: ReliableTask, order_id: int, kill_point: str) -> str:
    first = started(_redis, str(order_id))
    wait_for_the_kill(_redis, str(order_id), first and kill_point == "before-effect")
    if kill_point == "lease-lost" and first:
        _steal_the_claim(self.name, f"charge:{order_id}")
    with self.atomic():
        Payment.objects.create(
            order_id=order_id, amount_cents=1, gateway_charge_id="ch", task_id=self.request.id
        )
    # committed, not acked:
    wait_for_the_kill(_redis, str(order_id), first and kill_point == "after-effect")
    return "charged"


def _steal_the_claim(task_name: str, key: str) -> None:
    """As if this execution outlived its lease and another one took the key over."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            'UPDATE reliable_receipts SET claim_token = %s WHERE task_name = %s AND "key" = %s',
            ["another-execution", task_name, key],
        )


@shared_task(base=ReliableTask, name="crash.django_note")
def note(order_id: int) -> str:
    """Published with Django's ``delay_on_commit`` (the app's DjangoTask, kept under
    ``base=ReliableTask``)."""
    return f"noted {order_id}"


class ItemFailed(Exception):
    """Raised once, inside an item's transaction, after its write and its advance."""


@shared_task(
    base=ReliableTask,
    bind=True,
    name="crash.django_steps",
    timeout=30,
    idempotency_key="pay-items:{order_id}",
)
@retry_on(ItemFailed, wait=fixed(0.2), attempts=3)
def pay_items(self: ReliableTask, order_id: int, items: int, fail_at: int, block: str) -> int:
    """One Payment per item, each with its ``step.advance`` in the same transaction:
    ``block="reliable"`` is ``self.atomic()``, ``"django"`` Django's own
    ``transaction.atomic()``. The first execution raises inside item ``fail_at``'s
    block, after both: they roll back together, and the retry starts at that item."""
    from django.db import transaction

    with self.step("items") as step:
        for n in range((step.cursor or 0) + 1, items + 1):
            with self.atomic() if block == "reliable" else transaction.atomic():
                Payment.objects.create(
                    order_id=order_id,
                    amount_cents=n,
                    gateway_charge_id=f"item-{n}",
                    task_id=self.request.id,
                )
                step.advance(n)
                if n == fail_at and self.request.retries == 0:
                    raise ItemFailed(f"in item {n}, after its write and its advance")
    return int(step.cursor)
