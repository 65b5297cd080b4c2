"""What the web layer calls: an order is saved, and its jobs published once it commits."""

from django.db import transaction

from orders.models import Order
from orders.tasks import charge_payment, send_order_confirmation


def place_order(email: str, sku: str, amount_cents: int) -> Order:
    with transaction.atomic():
        order = Order.objects.create(email=email, sku=sku, amount_cents=amount_cents)
        # Published only if the order commits: a worker never looks for an order that
        # a rolled-back request never saved.
        transaction.on_commit(lambda: charge_payment.delay(order.pk))
        transaction.on_commit(lambda: send_order_confirmation.delay(order.pk))
    return order
