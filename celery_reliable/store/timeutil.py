"""Naive UTC timestamps, as the store's ``DateTime`` columns hold them."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)
