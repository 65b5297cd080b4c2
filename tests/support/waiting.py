"""The suite's one way to wait: for a condition to hold, never for time to pass.

Every poll loop of the suite goes through :func:`wait_until`. A test that must show
that something did *not* happen does not sleep either: it waits for a positive event
that must come after it (a sentinel job published last on the same queue, see
:func:`tests.support.workers.settle`; a count every process bumps on its way out).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds between two looks: short, since every condition is cheap to check.
INTERVAL = 0.02


def wait_until(
    check: Callable[[], T],
    what: str,
    *,
    timeout: float = 20.0,
    interval: float = INTERVAL,
    seen: Callable[[], Any] | None = None,
) -> T:
    """Call ``check`` until it returns a true value, and return that value.

    ``what`` says what the test waits for. After ``timeout`` seconds: AssertionError
    naming it and what was seen at the last look (``seen()`` when given, else the last
    value ``check`` returned).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() >= deadline:
            last = seen() if seen is not None else found
            raise AssertionError(f"waited {timeout:g}s for {what}; saw: {last!r}")
        time.sleep(interval)  # the pause between two looks; the loop waits for `check`
