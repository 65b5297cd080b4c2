"""What a process still owes a limits backend when it exits: the Redis give backs whose
answers it has not read yet (``redis_slots.py``). They were sent when their executions
ended, so their slots are free already; reading the answers is what tells one that
failed (and sends it again, or says so), within ``EXIT_SECONDS`` in all.

When it runs:

* a prefork pool process ends with ``os._exit`` (``billiard/pool.py``, ``_do_exit``),
  so ``atexit`` never runs there: the ``worker_process_shutdown`` receiver
  (``worker/receivers.py``), which billiard calls just before, runs it;
* any other process (a solo or threads pool's worker, a script) runs it at ``atexit``.

Pure standard library: the worker's receivers import it without importing redis.
"""

from __future__ import annotations

import atexit
import time
import weakref
from typing import Protocol

#: How long a process that exits spends on what it still owes, at most (s).
EXIT_SECONDS = 2.0


class Owing(Protocol):
    def settle(self, timeout: float) -> bool:
        """Finish within ``timeout`` seconds; False if something was left."""
        ...


_owing: weakref.WeakSet[Owing] = weakref.WeakSet()


def register(owing: Owing) -> None:
    _owing.add(owing)


def settle_all(timeout: float = EXIT_SECONDS) -> None:
    """Settle everything of this process, within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for owing in list(_owing):
        owing.settle(max(deadline - time.monotonic(), 0.0))


atexit.register(settle_all)
