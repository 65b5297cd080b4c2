"""The one way a worker refuses to start: one line on stderr, exit status 1.

A module of its own, with no import beyond the standard library: the receivers that
every process connects (``worker/receivers.py``) raise it too, and must not pull the
store's libraries into a process that only publishes.
"""

from __future__ import annotations

import sys


class WorkerMisconfigured(SystemExit):
    """The worker cannot start as configured: prints one line and exits with status 1.

    ``cause`` is the configuration error (``ImproperlyConfigured`` or
    ``MissingDependency``); an embedded worker's caller can catch this and read it.
    """

    def __init__(self, cause: Exception) -> None:
        super().__init__(1)
        self.cause = cause
        print(f"celery_reliable: the worker cannot start: {cause}", file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return str(self.cause)
