"""The shop's jobs: every one a ReliableTask, each error class declared.

* ``send_order_confirmation``: key ``confirmation:{order_id}``; retried on SMTP errors
  and timeouts, discarded on an invalid address, cancelled when the order is gone.
* ``charge_payment``: key ``charge:{order_id}``, its Payment written exactly once by
  ``atomic()``; retried on a gateway timeout and a rate limit (never sooner than its
  ``retry_after``), discarded on a declined card, cancelled when the order is gone.
* ``sync_inventory`` (published by a charge): unique per SKU for 60 s; snoozes while
  the warehouse is busy; retried on database errors.
* ``forget_abandoned_orders``: periodic (celery beat), harmless to run twice.
"""

from datetime import timedelta
from smtplib import SMTPException

from celery import shared_task
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import OperationalError
from django.utils import timezone

from celery_reliable import ReliableTask, Snooze, cancel_on, discard_on, retry_on
from celery_reliable.backoff import exponential
from orders import gateway, warehouse
from orders.models import Order, Payment, Stock


@shared_task(
    base=ReliableTask,
    bind=True,
    idempotency_key="confirmation:{order_id}",
    soft_time_limit=20,
    time_limit=30,
)
@retry_on(SMTPException, TimeoutError, ConnectionError, wait=exponential(cap=600), attempts=5)
@discard_on(ValidationError)
@cancel_on(Order.DoesNotExist)
def send_order_confirmation(self, order_id: int) -> str:
    order = Order.objects.get(pk=order_id)
    validate_email(order.email)  # a bad address will not get better: discarded
    send_mail(
        subject=f"Order #{order.pk} confirmed",
        message=f"We received your order of {order.sku}.",
        from_email=None,
        recipient_list=[order.email],
    )
    with self.atomic():
        Order.objects.filter(pk=order.pk).update(confirmation_sent_at=timezone.now())
    return order.email


@shared_task(
    base=ReliableTask,
    bind=True,
    idempotency_key="charge:{order_id}",
    soft_time_limit=45,
    time_limit=60,
)
@retry_on(gateway.GatewayTimeout, wait=exponential(factor=5, cap=300), attempts=5)
@retry_on(gateway.RateLimited, wait=exponential(factor=2, cap=600), attempts=8)
@discard_on(gateway.CardDeclined)
@cancel_on(Order.DoesNotExist)
def charge_payment(self, order_id: int) -> str:
    order = Order.objects.get(pk=order_id)
    # The gateway's own idempotency key makes a repeated call take one charge; the
    # shop's record of it is written exactly once by atomic().
    charge_id = gateway.charge(order, idempotency_key=f"order-{order.pk}")
    with self.atomic():  # Django's transaction.atomic(); the receipt commits with it
        Payment.objects.create(
            order=order,
            amount_cents=order.amount_cents,
            gateway_charge_id=charge_id,
            task_id=self.request.id,
        )
        Order.objects.filter(pk=order.pk).update(status=Order.PAID)
    # The stock changed: refresh it (at most one sync per SKU a minute is published).
    sync_inventory.delay(order.sku)
    return charge_id


@shared_task(
    base=ReliableTask,
    bind=True,
    unique={"period": 60, "keys": ["sku"]},
    max_snoozes=20,
    soft_time_limit=20,
    time_limit=30,
    waive={
        "idempotency": "it sets the stock to the warehouse's count: running it twice is harmless"
    },
)
@retry_on(OperationalError, wait=exponential(cap=60), attempts=3)  # the database dropped out
def sync_inventory(self, sku: str) -> int:
    busy = warehouse.busy_for()
    if busy > 0:
        raise Snooze(busy, reason="the warehouse is busy")
    quantity = warehouse.stock_of(sku)
    Stock.objects.update_or_create(
        sku=sku, defaults={"quantity": quantity, "synced_at": timezone.now()}
    )
    return quantity


@shared_task(
    base=ReliableTask,
    bind=True,
    soft_time_limit=50,
    time_limit=60,
    waive={"idempotency": "deleting what is already deleted is harmless"},
)
@retry_on(OperationalError, wait=exponential(cap=60), attempts=3)
def forget_abandoned_orders(self, older_than_hours: int = 24) -> int:
    """Periodic (``CELERY_BEAT_SCHEDULE``): orders never paid, after a day."""
    cutoff = timezone.now() - timedelta(hours=older_than_hours)
    deleted, _ = Order.objects.filter(
        status=Order.PENDING, created_at__lt=cutoff, payments__isnull=True
    ).delete()
    return deleted
