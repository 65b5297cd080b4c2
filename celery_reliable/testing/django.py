"""Django's ``transaction.on_commit`` under test: run what the test's transaction holds.

pytest-django's ``db`` fixture (like Django's ``TestCase``) wraps each test in a
transaction that is rolled back, so callbacks registered with ``on_commit`` never run,
and a task published from one is never published. :func:`run_on_commit_callbacks`
runs exactly those a commit would have run: the code under test has left its own
``atomic()`` blocks and only the test's are open. Inside an ``atomic()`` block of the
code's own nothing runs (it has not committed yet).
"""

from __future__ import annotations

import logging
import sys

__all__ = ["run_on_commit_callbacks"]

logger = logging.getLogger("celery_reliable.testing")


def run_on_commit_callbacks() -> int:
    """Run the ``on_commit`` callbacks waiting only for the test's own transaction, and
    those they register in turn; returns how many ran. Does nothing without Django."""
    if "django.db" not in sys.modules:
        return 0
    from django.conf import settings

    if not settings.configured:
        return 0
    from django.db import connections

    ran = 0
    for connection in connections.all(initialized_only=True):
        while connection.run_on_commit and _only_the_tests_transaction(connection):
            callbacks, connection.run_on_commit = connection.run_on_commit, []
            for entry in callbacks:
                callback, robust = entry[1], len(entry) > 2 and entry[2]
                ran += 1
                if not robust:
                    callback()
                    continue
                try:
                    callback()
                except Exception as exc:  # Django logs a robust callback's error too
                    logger.error(
                        "on_commit callback %s raised %s",
                        getattr(callback, "__qualname__", callback),
                        exc,
                        exc_info=True,
                    )
    return ran


def _only_the_tests_transaction(connection: object) -> bool:
    blocks = getattr(connection, "atomic_blocks", [])
    return bool(blocks) and all(getattr(b, "_from_testcase", False) for b in blocks)
