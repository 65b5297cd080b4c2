"""A charge written with the Django ORM through ``self.atomic()``, SIGKILLed at a chosen
point (the crash tests of ``tests/integration/test_crash.py``, on Django's path)."""

from __future__ import annotations

import redis
from celery import shared_task
from django.conf import settings
from orders.models import Payment

from celery_reliable import ReliableTask
from tests.support.apps.kill_points import started, wait_for_the_kill
from tests.support.outcomes import record_outcomes_to

record_outcomes_to(settings.REDIS_URL)
_redis = redis.Redis.from_url(settings.REDIS_URL)


# time_limit=12: the lease is 17 s, as in crash_app (see there for why).
@shared_task(
    base=ReliableTask,
    bind=True,
    name="crash.django_charge",
    time_limit=12,
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
