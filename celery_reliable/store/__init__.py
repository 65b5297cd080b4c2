"""The SQL store: idempotency receipts, dead letters, unique-enqueue locks, the
outcome history, heartbeats' progress, cancels, resumable jobs' steps, limits,
pauses, the outbox, the periodic jobs' slots and batches.

One database per app (``reliable_database_url``; SQLite by default, PostgreSQL in
production), reached through :func:`store_for`. The schema belongs to the Alembic
migrations shipped here: ``celery -A proj reliable db upgrade`` applies them; a SQLite
store also applies them itself on first use, so the embedded default needs no step.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from celery_reliable.config import settings_for
from celery_reliable.django import django_alias
from celery_reliable.errors import DeadLetterError, StoreUnavailable
from celery_reliable.store import migrate
from celery_reliable.store.batches import BatchRows
from celery_reliable.store.beat import BeatRuns
from celery_reliable.store.cancels import CancelRows
from celery_reliable.store.dead_letters import DeadLetter, DeadLetters
from celery_reliable.store.engine import create_store_engine, unavailable_as
from celery_reliable.store.history import OutcomeHistory
from celery_reliable.store.limits import LimitRows
from celery_reliable.store.outage import Outage
from celery_reliable.store.outbox import OutboxRows
from celery_reliable.store.pauses import PauseRows
from celery_reliable.store.progress import ProgressRows
from celery_reliable.store.receipts import Claim, Receipt, Receipts
from celery_reliable.store.steps import StepRows
from celery_reliable.store.unique import UniqueLocks

logger = logging.getLogger("celery_reliable.store")

__all__ = [
    "Claim",
    "DeadLetter",
    "DeadLetterError",
    "Receipt",
    "Store",
    "StoreUnavailable",
    "store_for",
]

_STORE_ATTR = "_reliable_store"
_lock = threading.Lock()


def _dialect_insert(engine: Engine) -> Any:
    """The dialect's insert(), which has on_conflict_do_update()."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert


class Store:
    """The store of one app in one process (engines do not survive a fork)."""

    def __init__(self, app: Celery, url: str) -> None:
        self.app = app
        #: The setting as written (``"django"`` for Django's database).
        self.url = url
        self.pid = os.getpid()
        #: The ``DATABASES`` alias when the store is Django's database, else None.
        self.django_alias = django_alias(url)
        if self.django_alias is not None:
            from celery_reliable.django.database import engine_url

            url = engine_url(self.django_alias)
        self.engine = create_store_engine(url)
        insert = _dialect_insert(self.engine)
        self._receipts = Receipts(self.engine, insert)
        self._dead_letters = DeadLetters(self.engine, app)
        self._unique = UniqueLocks(self.engine, insert)
        self._history = OutcomeHistory(self.engine, insert)
        self._progress = ProgressRows(self.engine, insert)
        self._limits = LimitRows(self.engine, insert)
        self._steps = StepRows(self.engine, insert)
        self._cancels = CancelRows(self.engine, insert)
        self._pauses = PauseRows(self.engine, insert)
        self._outbox = OutboxRows(self.engine)
        self._beat_runs = BeatRuns(self.engine, insert)
        self._batches = BatchRows(self.engine)
        #: Said once per outage: keyed executions that cannot claim (claims.py).
        self.outage = Outage()
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        # Under Django's test framework only (never imported by a worker in
        # production): a test transaction would make the store's connections hang.
        self._refuse_test_transactions = (
            self.django_alias is not None and "django.test.testcases" in sys.modules
        )

    @property
    def dialect(self) -> str:
        return str(self.engine.dialect.name)

    def ensure_schema(self) -> None:
        """Once per process: SQLite applies the migrations; PostgreSQL must be at head."""
        if self._refuse_test_transactions:
            from celery_reliable.django.database import refuse_a_test_transaction

            assert self.django_alias is not None
            refuse_a_test_transaction(self.django_alias)
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            with unavailable_as("checking the celery_reliable schema"):
                if self.dialect == "sqlite":
                    before, after = migrate.upgrade(self.engine)
                    if before != after:
                        logger.info("celery_reliable: SQLite schema %s -> %s", before, after)
                else:
                    current, head = migrate.current(self.engine), migrate.head()
                    if current != head:
                        how = (
                            "python manage.py migrate celery_reliable"
                            if self.django_alias is not None
                            else "celery -A <app> reliable db upgrade"
                        )
                        raise StoreUnavailable(
                            f"the celery_reliable schema is at {current or 'nothing'}, "
                            f"the code needs {head}: run `{how}`"
                        )
            self._schema_ready = True

    @property
    def receipts(self) -> Receipts:
        self.ensure_schema()
        return self._receipts

    @property
    def dead_letters(self) -> DeadLetters:
        self.ensure_schema()
        return self._dead_letters

    @property
    def unique(self) -> UniqueLocks:
        self.ensure_schema()
        return self._unique

    @property
    def history(self) -> OutcomeHistory:
        self.ensure_schema()
        return self._history

    @property
    def limits(self) -> LimitRows:
        """``limits=[...]`` kept here (``reliable_limits_url = "store"``)."""
        self.ensure_schema()
        return self._limits

    @property
    def progress(self) -> ProgressRows:
        self.ensure_schema()
        return self._progress

    @property
    def steps(self) -> StepRows:
        self.ensure_schema()
        return self._steps

    @property
    def cancels(self) -> CancelRows:
        self.ensure_schema()
        return self._cancels

    @property
    def pauses(self) -> PauseRows:
        """Paused queues and tasks (``celery reliable pause``)."""
        self.ensure_schema()
        return self._pauses

    @property
    def outbox(self) -> OutboxRows:
        """Messages written by ``publish_in``, waiting for a relay (``outbox/``)."""
        self.ensure_schema()
        return self._outbox

    @property
    def beat_runs(self) -> BeatRuns:
        """The periodic jobs' slots, claimed by ``celery_reliable.beat:Scheduler``."""
        self.ensure_schema()
        return self._beat_runs

    @property
    def batches(self) -> BatchRows:
        """Batches and their members' endings (``celery_reliable.Batch``)."""
        self.ensure_schema()
        return self._batches

    @contextmanager
    def atomic(
        self,
        claim: Claim | None = None,
        *,
        complete: bool = True,
        lease_seconds: float | None = None,
    ) -> Iterator[Any]:
        """The transaction of ``task.atomic()``: a SQLAlchemy session on the store's
        database, or Django's ``transaction.atomic()`` when the store is Django's
        database. With a claim, the receipt is marked succeeded inside it; with
        ``complete=False`` (inside a step) it is only checked to be still this
        execution's, and its lease renewed when ``lease_seconds`` is given."""
        if self.django_alias is not None:
            from celery_reliable.django import database

            self.ensure_schema()
            with database.atomic(
                self.django_alias, claim, complete=complete, lease_seconds=lease_seconds
            ) as connection:
                yield connection
            return
        marking = claim is not None and not claim.completed
        with self.session() as session:
            yield session
            if marking:
                assert claim is not None
                if complete:
                    self.receipts.complete_in(session, claim)
                else:
                    self.receipts.hold_in(session, claim, lease_seconds)
        if marking and complete:
            assert claim is not None
            claim.completed = claim.result_pending = True

    def in_django_transaction(self) -> bool:
        """The store is Django's database and Django's connection is inside a
        ``transaction.atomic()`` block (the body's own, not ``self.atomic()``)."""
        if self.django_alias is None:
            return False
        from django.db import connections

        return bool(connections[self.django_alias].in_atomic_block)

    def advance_step_in(  # noqa: PLR0917 - where, which step, and what then
        self,
        transaction: Any,
        task_name: str,
        job: str,
        step: str,
        cursor: str,
        on_commit: Callable[[], None],
    ) -> None:
        """Write a step's cursor inside the transaction :meth:`atomic` yielded (a
        session; with Django's database, Django's open ``transaction.atomic()`` block,
        whichever opened it); ``on_commit`` is called once it commits."""
        if self.django_alias is not None:
            from celery_reliable.django import database

            database.advance_step(self.django_alias, task_name, job, step, cursor, on_commit)
            return
        session: Session = transaction
        self.steps.advance_in(session.connection(), task_name, job, step, cursor)
        event.listen(session, "after_commit", lambda _session: on_commit(), once=True)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session on the store's database, committed on success, rolled back else."""
        self.ensure_schema()
        with Session(self.engine) as session, session.begin():
            yield session

    def dispose(self) -> None:
        self._receipts.close()
        self.engine.dispose()


def store_for(app: Celery) -> Store | None:
    """The app's store in this process, or None when ``reliable_database_url`` is None."""
    store: Store | None = app.__dict__.get(_STORE_ATTR)
    if store is not None and store.pid == os.getpid():
        return store
    url = settings_for(app).database_url
    if url is None:
        return None
    with _lock:
        store = app.__dict__.get(_STORE_ATTR)
        if store is not None and store.pid != os.getpid():
            # A forked child must not use the parent's pooled connections: drop the
            # pool without closing the parent's sockets, and build a new engine.
            store.engine.dispose(close=False)
            store = None
        if store is None:
            store = Store(app, url)
            setattr(app, _STORE_ATTR, store)
    return store


def forget_store(app: Celery) -> None:
    """Close the app's store in this process and forget it (``testing.reset``)."""
    store: Store | None = app.__dict__.pop(_STORE_ATTR, None)
    if store is not None and store.pid == os.getpid():
        store.dispose()


def require_store(app: Celery, why: str) -> Store:
    store = store_for(app)
    if store is None:
        from celery.exceptions import ImproperlyConfigured

        from celery_reliable.config import as_written

        setting = as_written(app, "reliable_database_url")
        raise ImproperlyConfigured(f"{why} needs a store, but {setting} is None")
    return store
