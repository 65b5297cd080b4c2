"""The batch whose block runs in this context (a context variable: this thread, or
asyncio task). Read by the batch's stamp (``batch.py``) and by ``publish_in``, which
tells the batch of the members it wrote in a transaction: ``publish_in`` may not
import ``batch.py`` (it imports the task class, which imports the outbox).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from celery_reliable.batches.batch import Batch
    from celery_reliable.store.batches import BatchRow, OnCompleted


class Transaction(Protocol):
    """The caller's transaction in which ``publish_in`` wrote members of a batch
    (``outbox/publish.py``), as the batch's seal sees it."""

    #: The same for every ``publish_in`` on one connection.
    key: object
    #: Its database's kind: "sqlite" or "postgresql".
    dialect: str

    def in_transaction(self) -> bool:
        """Still open: neither committed nor rolled back."""

    def seal(
        self,
        batch_id: str,
        members: Sequence[tuple[str, str]],
        now: datetime,
        on_completed: OnCompleted,
        abandon: bool,
    ) -> BatchRow | None:
        """The batch sealed in this transaction: it commits, or rolls back, with it."""

    def on_rollback(self, callback: Callable[[], None]) -> bool:
        """Have ``callback`` called once this transaction rolled back (and released
        its locks), never while it is still open (a savepoint's rollback is not its
        end); False when it cannot be known. Django's: also once it committed after
        a savepoint's rollback took the seal with it (``django/rollback.py``): the
        callback seals the batch again, whose seal is gone either way."""


#: The batch whose block runs in this context, if any.
current: ContextVar[Batch | None] = ContextVar("reliable_batch", default=None)


def current_batch() -> Batch | None:
    """The batch whose block runs in this context (None outside any)."""
    return current.get()
