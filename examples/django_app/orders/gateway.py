"""A fake payment gateway with the errors a real one has.

Faults are scripted per customer in ``settings.SHOP_GATEWAY_FAULTS`` (``{"email":
["timeout", "rate_limited"]}``: the first call for that customer times out, the second
is rate-limited, the third succeeds), or chosen by the customer's address: ``declined``
in it is a declined card, ``slow`` times out on the first call, ``busy`` is rate-limited
on the first call.
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
    script = settings.SHOP_GATEWAY_FAULTS.get(order.email) or _script_of(order.email)
    fault = script[calls] if calls < len(script) else None
    GatewayCall.objects.create(order_id=order.pk, result=fault or "charged")
    if fault == "timeout":
        raise GatewayTimeout(f"no answer for {idempotency_key} within 10 s")
    if fault == "rate_limited":
        raise RateLimited(retry_after=2)
    if fault == "declined":
        raise CardDeclined(f"card of {order.email} declined")
    return f"ch_{idempotency_key}"


def _script_of(email: str) -> list[str]:
    if "declined" in email:
        return ["declined"] * 100
    if "slow" in email:
        return ["timeout"]
    if "busy" in email:
        return ["rate_limited"]
    return []
