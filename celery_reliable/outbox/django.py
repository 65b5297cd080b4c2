"""``CELERY_RELIABLE_OUTBOX = True``: in Django, a ReliableTask's ``delay()`` /
``apply_async()`` inside ``transaction.atomic()`` is written to the outbox on Django's
connection, as ``publish_in(transaction, sig)`` would; outside a transaction it is
published at once, as usual.

Unlike ``transaction.on_commit`` (and Celery's ``delay_on_commit``), nothing is lost
when the process dies between the commit and the publish, or the broker is down then:
the message is a row of the same commit.
"""

from __future__ import annotations

from typing import Any

from celery.exceptions import ImproperlyConfigured

from celery_reliable.config import as_written
from celery_reliable.outbox.publish import publish_in
from celery_reliable.store import require_store

#: ``apply_async``'s positional parameters after ``args, kwargs, task_id``.
POSITIONAL = ("producer", "link", "link_error", "shadow")


def divert(task: Any, args: Any, kwargs: Any, options: dict[str, Any]) -> Any:
    """The outbox's ``AsyncResult`` when Django's connection to the store's database is
    inside ``transaction.atomic()``; None to publish as usual. ``options``:
    ``apply_async``'s, by name (``task_id`` included)."""
    store = require_store(task.app, as_written(task.app, "reliable_outbox"))
    alias = store.django_alias
    if alias is None:
        raise ImproperlyConfigured(
            f"{as_written(task.app, 'reliable_outbox')} = True writes .delay() inside "
            "transaction.atomic() to the outbox in Django's database, but the store is "
            f"not: set {as_written(task.app, 'reliable_database_url')} = 'django'"
        )
    from django.db import connections

    connection = connections[alias]
    if not connection.in_atomic_block:
        return None
    return publish_in(connection, task.signature(args, kwargs), **options)
