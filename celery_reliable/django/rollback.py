"""A Django transaction's end without a commit, told (Django says when a transaction
commits, ``on_commit``, never when it rolls back): what a batch sealed in it needs
(``outbox/publish.py``'s ``_Django.on_rollback``, ``batches/ending.py``'s ``seal``).

A marker is registered with the connection's ``on_commit``, where the seal was
written; Django's ``run_on_commit`` list is all that holds it. Django calls it after
the commit, and drops it uncalled when the transaction rolls back (``rollback()``,
after the database's rollback), when the connection closes (``close()``, before
closing it: the database rolls back then), or when a savepoint it was registered
under rolls back (``savepoint_rollback()``: a nested ``atomic()`` that raised). A
``weakref.finalize`` on the marker runs once it is freed: dropped uncalled, it is
that end, and its place says which:

* a savepoint's rollback (Django's connection is still in the ``atomic()`` block the
  marker was registered in, but no longer in one of its savepoints): the transaction
  is still open, so nothing is sealed on the store's connection. The seal went with
  the savepoint: the marker is registered again at the outer level, and the outer
  transaction's end decides. Rolled back, as below; committed, the callback is
  called after the commit too (the batch is still open: its seal is to be written
  again, counting the members whose rows committed).
* a rollback that is over (the database's connection holds no transaction): the
  callback is called there and then, inside Django's ``rollback()``, after the
  database's rollback, which released its locks (SQLite's write lock, the batch's
  row).
* otherwise (``close()`` of a connection inside its transaction, or a connection
  freed as its thread ends): the database's connection still holds the transaction
  and its locks, which it gives up right after. The callback is called in a thread
  of its own, whose store transaction waits for those locks; not a daemon, so the
  process waits for it at exit.

Calling the callback for a transaction that committed is harmless (the batch is
sealed already: ``_seal_after_rollback`` finds it so and does nothing). It happens
when a commit hook registered before the marker raised (Django runs no further
hook), and with autocommit off, whose commit hooks wait for ``set_autocommit(True)``:
a ``rollback()`` of a later transaction drops them (on SQLite, Django's ``atomic()``
there commits as it exits: its savepoint began the transaction). Never while the
transaction holds the seal's locks in this thread: then it is the thread, which
waits for them.

Mistaken for a savepoint's rollback: ``close()`` inside an outer ``atomic()`` block
after the nested one where the marker was registered released its savepoint. The
marker is registered again; Django drops it at the connection's next ``close()`` or
``connect()``, and the callback is called then (docs/batches.md, "Not yet").

CPython only: its reference counting frees the marker the moment Django drops it,
inside Django's call. Another interpreter frees it at some later collection, when
Django's connection may be in any state: there ``on_rollback`` answers False (the
batch stays open if the transaction rolls back, as before).
"""

from __future__ import annotations

import logging
import platform
import threading
import weakref
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("celery_reliable.batches")

_CPYTHON = platform.python_implementation() == "CPython"


class _Fate:
    """One registration: the callback, and where its marker waits."""

    __slots__ = ("after_savepoint", "callback", "committed", "connection", "savepoints")

    def __init__(
        self, connection: Any, callback: Callable[[], None], *, after_savepoint: bool
    ) -> None:
        #: Weak: a connection freed (its thread ended) is not kept, nor its transaction.
        self.connection = weakref.ref(connection)
        self.callback = callback
        #: The marker's savepoints: those of Django's atomic() blocks around it.
        self.savepoints = frozenset(connection.savepoint_ids)
        #: A savepoint's rollback took the seal: called at the commit too.
        self.after_savepoint = after_savepoint
        self.committed = False


class _Marker:
    """What Django's ``on_commit`` holds; it must not be referenced anywhere else."""

    __slots__ = ("__weakref__", "fate")

    def __init__(self, fate: _Fate) -> None:
        self.fate = fate

    def __call__(self) -> None:
        fate = self.fate
        fate.committed = True
        if fate.after_savepoint:
            _call(fate.callback)


def on_rollback(connection: Any, callback: Callable[[], None]) -> bool:
    """Have ``callback`` called once the transaction open on Django's ``connection``
    (inside ``atomic()``) rolled back, never while it is open (see above); False when
    it cannot be known (not CPython, or no ``atomic()`` block)."""
    if not _CPYTHON or not connection.in_atomic_block:
        return False
    _register(connection, callback, after_savepoint=False)
    return True


def _register(connection: Any, callback: Callable[[], None], *, after_savepoint: bool) -> None:
    fate = _Fate(connection, callback, after_savepoint=after_savepoint)
    marker = _Marker(fate)
    # The finalizer holds the fate, never the marker (it would keep it alive).
    finalizer = weakref.finalize(marker, _dropped, fate)
    # At exit nothing is called: a transaction still open then rolls back with its
    # connection, as a process killed does (docs/batches.md).
    finalizer.atexit = False
    connection.on_commit(marker)


def _dropped(fate: _Fate) -> None:
    """The marker was freed: after its call (a commit), or dropped uncalled."""
    if fate.committed:
        return
    try:
        connection = fate.connection()
        if connection is None:
            # Freed, its thread gone: its database connection closes, rolling back.
            _in_a_thread(fate.callback)
        elif connection.in_atomic_block and not fate.savepoints <= set(connection.savepoint_ids):
            # A savepoint of the marker rolled back (it is no longer one of the open
            # blocks'), inside Django's savepoint_rollback(): the transaction goes on.
            _register(connection, fate.callback, after_savepoint=True)
        elif _holds_transaction(connection):
            _in_a_thread(fate.callback)
        else:
            _call(fate.callback)
    except Exception:
        logger.exception("a Django transaction ended uncommitted, and what follows failed")


def _in_a_thread(callback: Callable[[], None]) -> None:
    """Not a daemon: the process waits for it at exit (it waits for the locks the
    ending transaction gives up)."""
    threading.Thread(target=_call, args=(callback,), name="celery_reliable-batch-seal").start()


def _call(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        logger.exception("a Django transaction ended, and what follows failed")


def _holds_transaction(connection: Any) -> bool:
    """The database's connection under Django's is in a transaction (holding its
    locks): SQLite's ``in_transaction``; psycopg's (2 and 3) status not IDLE (0)."""
    raw = getattr(connection, "connection", None)
    if raw is None or getattr(raw, "closed", False):
        return False
    if connection.vendor == "sqlite":
        return bool(raw.in_transaction)
    info = getattr(raw, "info", None)
    status = getattr(info, "transaction_status", None)
    return status is None or int(status) != 0
