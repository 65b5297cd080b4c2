"""Waiting for our own terminal states.

Celery's ``AsyncResult.get()`` returns only for Celery's ready states (SUCCESS,
FAILURE, REVOKED): a CANCELLED or DISCARDED task is finished but never "ready" to
Celery, and ``get()`` would wait until its timeout. :func:`wait_for_outcome` waits for
either.
"""

from __future__ import annotations

import time
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError

from celery_reliable.outcomes import CANCELLED_STATE, DISCARDED_STATE

#: States after which nothing more happens to a task id.
TERMINAL_STATES = frozenset(states.READY_STATES | {CANCELLED_STATE, DISCARDED_STATE})


def wait_for_outcome(result: Any, timeout: float = 10.0, interval: float = 0.05) -> str:
    """Poll ``result`` until its state is terminal; return the state.

    Raises ``celery.exceptions.TimeoutError`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        state: str = result.state
        if state in TERMINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise CeleryTimeoutError(f"task {result.id} still {state} after {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
