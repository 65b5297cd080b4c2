"""Exceptions celery_reliable raises or classifies. Pure module."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The receipts / dead-letter database cannot be reached (or has no schema).

    Raised before a task body runs when its claim cannot be taken; ReliableTask's
    built-in rule retries it with backoff (override with your own ``retry_on``).
    """


class IdempotencyConflict(Exception):
    """The same idempotency key arrived with a different payload: the job is DISCARDED."""


class IdempotencyKeyError(Exception):
    """The idempotency key could not be computed from the arguments: DISCARDED."""


class LeaseLost(Exception):
    """This execution's claim was taken over (its lease expired while it ran).

    Raised inside ``self.atomic()`` so the writes roll back; the execution ends
    SNOOZED and a later run finds the other execution's result.
    """


class UniqueKeyError(Exception):
    """The unique-enqueue key could not be computed from the arguments."""
