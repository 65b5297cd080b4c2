"""A fake warehouse API that is sometimes busy (``settings.SHOP_WAREHOUSE_BUSY_SECONDS``)."""

from django.conf import settings

COUNTS = {"tea": 40, "cup": 12, "pot": 3}


def busy_for() -> float:
    """Seconds until the warehouse takes requests again (0: it does now)."""
    return float(settings.SHOP_WAREHOUSE_BUSY_SECONDS)


def stock_of(sku: str) -> int:
    return COUNTS.get(sku, 0)
