"""What a limit backend is asked and answers: the parts of one take, and its answer.

Pure module, shared by the Redis backend (``redis_slots.py``) and the SQL one
(``store/limits.py``).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Part:
    """One limit of one take: kind ``"c"``/``"r"``, rendered key, n, span in ms (a
    concurrency slot's lease, a rate's window)."""

    kind: str
    key: str
    n: int
    span_ms: int


@dataclass(frozen=True)
class Taken:
    #: Redis's clock at the take (ms), for the mean hold time at the give back.
    at_ms: int


@dataclass(frozen=True)
class Full:
    #: How long to wait before trying again (ms).
    wait_ms: int
    #: Index of the first limit that was full.
    blocked: int
    #: When this job first waited (ms): its place in the line.
    since_ms: int


def tiebreak(job: str) -> int:
    """0-999, the same for a job every time: two jobs that first waited in the same
    millisecond still have a strict order in line (``since`` * 1000 + this)."""
    return zlib.crc32(job.encode()) % 1000


def not_given_back(task_names: Sequence[str], exc: Exception) -> None:
    """A give back that failed for good: said once (the outcome stands, and the slots
    free themselves when their leases end)."""
    logger = logging.getLogger("celery_reliable.limits")
    if len(task_names) == 1:
        logger.warning(
            "task %s: %s; its slots free themselves when their lease ends", task_names[0], exc
        )
        return
    logger.warning(
        "tasks %s: %s; their slots free themselves when their leases end",
        ", ".join(sorted(set(task_names))),
        exc,
    )


class Backend(Protocol):
    """Where slots live: every worker of every app that names it shares them."""

    def take(self, me: str, since_ms: int, token: str, parts: Sequence[Part]) -> Taken | Full:
        """Take a slot of every part, or none (and line ``me`` up where one was full)."""
        ...

    def give_back(self, token: str, at_ms: int, parts: Sequence[Part]) -> None:
        """Give back now (LimitsUnavailable if it cannot)."""
        ...

    def give_back_soon(self, token: str, at_ms: int, parts: Sequence[Part], task_name: str) -> None:
        """Give back without making the execution wait for it if the backend can
        (Redis: sent, its answer read later); never raises: a failure is logged,
        naming ``task_name`` (``not_given_back``)."""
        ...

    def renew(self, token: str, parts: Sequence[Part]) -> int:
        """Push the leases of this holder's concurrency slots; how many it still held."""
        ...

    def holders(self, part: Part) -> int: ...

    def close(self) -> None: ...
