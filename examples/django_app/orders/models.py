from django.db import models


class Order(models.Model):
    PENDING, PAID = "pending", "paid"

    email = models.CharField(max_length=254)
    sku = models.CharField(max_length=32)
    amount_cents = models.PositiveIntegerField()
    status = models.CharField(max_length=16, default=PENDING)
    confirmation_sent_at = models.DateTimeField(null=True)
    created_at = models.DateTimeField(auto_now_add=True)


class Payment(models.Model):
    """One per charge taken. No unique constraint on ``order``, on purpose: that the
    shop charges an order at most once is ``charge_payment``'s ``atomic()`` at work,
    and the crash tests count these rows to prove it."""

    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="payments")
    amount_cents = models.PositiveIntegerField()
    gateway_charge_id = models.CharField(max_length=64)
    task_id = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)


class GatewayCall(models.Model):
    """Every call the fake gateway received (the gateway's own log, not the shop's)."""

    order_id = models.BigIntegerField(db_index=True)
    result = models.CharField(max_length=32)
    created_at = models.DateTimeField(auto_now_add=True)


class Stock(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    quantity = models.IntegerField(default=0)
    synced_at = models.DateTimeField(null=True)
