"""A fake warehouse API: busy until ``settings.SHOP_WAREHOUSE_BUSY_UNTIL`` (a Unix
time; 0 means never busy), and it knows only the SKUs it stocks."""

import time

from django.conf import settings

COUNTS = {"tea": 40, "cup": 12, "pot": 3}


def busy_for() -> float:
    """Seconds until the warehouse takes requests again (0: it does now)."""
    return max(0.0, float(settings.SHOP_WAREHOUSE_BUSY_UNTIL) - time.time())


def stock_of(sku: str) -> int:
    return COUNTS[sku]  # an unknown SKU is a KeyError nobody declared: FAILED
