"""A store that cannot be reached, for part of a test: its batches' tables renamed out
of the way (``batch_tables_away``). Every statement on them then fails as on a store
that does not answer (``StoreUnavailable``: "no such table" on SQLite, "relation does
not exist" on PostgreSQL), on SQLite and PostgreSQL alike, while the rest of the store
(the outbox, the receipts) keeps answering; the tables come back, rows and all, when
the block exits. (``test_store_faults.py`` takes a whole PostgreSQL server down.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from celery_reliable.store import Store

BATCH_TABLES = ("reliable_batches", "reliable_batch_members")


@contextmanager
def batch_tables_away(store: Store) -> Iterator[None]:
    with store.engine.begin() as connection:
        for table in BATCH_TABLES:
            connection.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        yield
    finally:
        with store.engine.begin() as connection:
            for table in BATCH_TABLES:
                connection.exec_driver_sql(f"ALTER TABLE {table}_away RENAME TO {table}")
