"""When a relay looks at the outbox again.

* PostgreSQL: a writer NOTIFYs inside its own transaction (``store/outbox.py``), and
  PostgreSQL delivers it at the commit, and only then; the relay LISTENs on a
  connection of its own (psycopg 3) and looks within milliseconds. It also looks every
  ``10 * reliable_outbox_poll_interval`` seconds (2 s by default) with no notification:
  for rows a relay that died left locked, or notifications lost while its connection was
  down.
* SQLite (and a PostgreSQL driver other than psycopg 3.2+): it looks every
  ``reliable_outbox_poll_interval`` seconds (0.2 s by default); a look is a read of the
  first id, which takes no lock.

A wait returns early when the relay is asked to stop.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.engine import Engine

from celery_reliable.store.outbox import CHANNEL

logger = logging.getLogger("celery_reliable.outbox")

#: How often a LISTENing relay still looks on its own, in poll intervals.
LISTEN_FALLBACK = 10
#: The longest a LISTENing relay waits at once before it checks whether to stop.
_SLICE = 0.25


class Poll:
    """Looks every ``interval`` seconds."""

    listens = False

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def wait(self, stop: threading.Event) -> bool:
        """Wait for the next look; False: the interval ran out (no notification)."""
        stop.wait(self.interval)
        return False

    def close(self) -> None:
        return None


class Listen:
    """LISTENs on the outbox's channel, on a connection taken out of the store's pool."""

    listens = True

    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self.fallback = interval * LISTEN_FALLBACK
        self._connection: Any = None
        self._lost = False

    def start(self) -> bool:
        """LISTEN (before the first look: no commit after it is missed). False when
        this driver cannot (the relay then polls)."""
        raw = self.engine.raw_connection()
        connection: Any = raw.driver_connection
        if not _listens(connection):
            raw.close()
            return False
        raw.detach()  # its own, for good: a pooled connection would carry the LISTEN on
        connection.autocommit = True
        connection.execute(f"LISTEN {CHANNEL}")
        self._connection = connection
        return True

    def wait(self, stop: threading.Event) -> bool:
        """Wait for a commit's notification, at most the fallback interval; True when
        one came (or the connection was lost and is back: notifications may have been
        missed meanwhile, so look)."""
        if self._connection is None:
            return self._reconnect(stop)
        waited = 0.0
        try:
            while waited < self.fallback and not stop.is_set():
                if any(True for _ in self._connection.notifies(timeout=_SLICE, stop_after=1)):
                    # Several commits, one look: drop those already queued.
                    for _ in self._connection.notifies(timeout=0):
                        pass
                    return True
                waited += _SLICE
        except Exception as exc:
            self._drop(exc)
            return True
        return False

    def _reconnect(self, stop: threading.Event) -> bool:
        stop.wait(self.interval)
        try:
            self.start()
        except Exception:
            return False
        if self._lost:
            self._lost = False
            logger.warning("celery_reliable outbox: listening for commits again")
        return True

    def _drop(self, error: BaseException) -> None:
        if not self._lost:
            self._lost = True
            logger.warning(
                "celery_reliable outbox: stopped hearing of commits (%s); looking every "
                "%gs until the database answers",
                error,
                self.interval,
            )
        self.close()

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # closing a connection already lost
                logger.debug("closing the LISTEN connection failed", exc_info=True)


def _listens(connection: Any) -> bool:
    """psycopg 3.2+ (``notifies(timeout=...)``); psycopg2's ``notifies`` is a list."""
    import inspect

    notifies = getattr(connection, "notifies", None)
    if not callable(notifies):
        return False
    try:
        return "timeout" in inspect.signature(notifies).parameters
    except (TypeError, ValueError):
        return False


def waker_for(engine: Engine, interval: float) -> Poll | Listen:
    """LISTEN on PostgreSQL with psycopg 3.2+, else poll."""
    if engine.dialect.name == "postgresql":
        listen = Listen(engine, interval)
        try:
            started = listen.start()
        except Exception as exc:  # the database is down: LISTEN once it answers
            listen._drop(exc)
            return listen
        if started:
            return listen
        logger.info(
            "celery_reliable outbox: the PostgreSQL driver cannot LISTEN here (psycopg 3.2+ "
            "can); looking at the outbox every %gs",
            interval,
        )
    return Poll(interval)
