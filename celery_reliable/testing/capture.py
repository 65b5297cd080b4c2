"""``capture_outcomes()``: the outcomes sent inside a block, as a list to assert on.

Modelled on structlog's ``capture_logs``: a context manager that yields a list, fills
it while the block runs and disconnects in ``finally``, whatever the block raised.
:func:`listen_outcomes` is the machinery under it, shared with the plugin's rule
coverage (``rule_coverage.py``), which keeps a summary of each event, not the event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery_reliable.signals import OutcomeEvent, task_outcome


@contextmanager
def listen_outcomes(receive: Callable[[OutcomeEvent], None], name: str) -> Iterator[None]:
    """Call ``receive(event)`` for every ``task_outcome`` sent in this process inside
    the block, from whichever thread sent it; ``name`` tells the listener apart among
    the signal's receivers."""

    def hear(sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        if event is not None:
            receive(event)

    uid = f"celery_reliable.testing.{name}:{id(hear)}"
    task_outcome.connect(hear, weak=False, dispatch_uid=uid)
    try:
        yield
    finally:
        task_outcome.disconnect(dispatch_uid=uid)


@contextmanager
def capture_outcomes() -> Iterator[list[OutcomeEvent]]:
    """Every ``task_outcome`` sent in this process inside the block, in the order it
    was sent (from any thread: an embedded worker's too), as :class:`OutcomeEvent`::

        with capture_outcomes() as seen:
            perform_task(send_order_confirmation, args=(42,))
        assert seen[0].outcome is Outcome.RETRIED
    """
    seen: list[OutcomeEvent] = []
    lock = threading.Lock()

    def keep(event: OutcomeEvent) -> None:
        with lock:
            seen.append(event)

    with listen_outcomes(keep, "capture_outcomes"):
        yield seen
