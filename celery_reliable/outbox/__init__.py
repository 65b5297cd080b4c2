"""Enqueue exactly once: a transactional outbox (DESIGN §4).

* ``publish_in(session_or_connection, signature)`` (``publish``) writes the message,
  built by Celery's own machinery (``message``), as a row of ``reliable_outbox`` in the
  caller's transaction: it commits, or rolls back, with the caller's writes.
* A relay (``relay``: a thread in every worker, and ``celery -A proj reliable relay``)
  publishes the committed rows in the order they were written and deletes each once
  the broker has it; it is woken by PostgreSQL's ``NOTIFY`` at the commit, and polls
  SQLite (``wake``).
* A row published twice (a relay killed between the publish and the delete) runs once:
  the message is marked (``headers.OUTBOX_HEADER``), and the worker takes an
  idempotency receipt for its task id (``execution.py``, ``claims.py``).
* In Django, ``CELERY_RELIABLE_OUTBOX = True`` sends ``.delay()`` inside
  ``transaction.atomic()`` through it (``django``).
"""

from __future__ import annotations

from celery_reliable.outbox.publish import publish_in

__all__ = ["publish_in"]
