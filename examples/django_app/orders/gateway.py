"""A fake payment gateway with the errors a real one has.

Faults are scripted per order in ``settings.SHOP_GATEWAY_FAULTS`` (``{"email":
["timeout", "rate_limited"]}``: the first call for that customer times out, the second
is rate-limited, the third succeeds) or chosen by the card: ``declined`` in the email.
Like Stripe's, the gateway takes an idempotency key, so a call repeated after a crash
takes one charge.
"""

from django.conf import settings

from orders.models import GatewayCall, Order


class GatewayTimeout(Exception):
    """Transient: the gateway did not answer in time."""


class RateLimited(Exception):
    """Transient: HTTP 429; ``retry_after`` is the server's Retry-After, in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limited, retry after {retry_after:g} s")
        self.retry_after = retry_after


class CardDeclined(Exception):
    """Permanent: retrying charges the same declined card."""


def charge(order: Order, idempotency_key: str) -> str:
    """Charge the order; returns the gateway's charge id."""
    calls = GatewayCall.objects.filter(order_id=order.pk).count()
    script = settings.SHOP_GATEWAY_FAULTS.get(order.email, [])
    fault = script[calls] if calls < len(script) else None
    if fault is None and "declined" in order.email:
        fault = "declined"
    GatewayCall.objects.create(order_id=order.pk, result=fault or "charged")
    if fault == "timeout":
        raise GatewayTimeout(f"no answer for {idempotency_key} within 10 s")
    if fault == "rate_limited":
        raise RateLimited(retry_after=2)
    if fault == "declined":
        raise CardDeclined(f"card of {order.email} declined")
    return f"ch_{idempotency_key}"
