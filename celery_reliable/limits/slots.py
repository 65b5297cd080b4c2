"""One execution's slots: taken before the body (before its idempotency claim too),
given back when it ends, renewed by its heartbeat; and where they live, per app.

A slot is a lease: a concurrency slot lasts the task's hard time limit + margin, or,
with ``heartbeat_timeout``, heartbeat + grace + margin renewed by each beat, so a
holder that dies (SIGKILL, a lost host) frees its slot when its lease ends.

The give back does not hold the execution up on Redis: it is sent, and its answer read
later (``redis_slots.py``); the store gives it back synchronously.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable.config import as_written, settings_for
from celery_reliable.errors import LimitsUnavailable
from celery_reliable.limits.parts import Backend, Part, Taken
from celery_reliable.limits.spec import Concurrency, TaskLimits

logger = logging.getLogger("celery_reliable.limits")

_BACKEND_ATTR = "_reliable_limits_backend"
_lock = threading.Lock()


def limits_url(app: Celery) -> str:
    """Where the app's limits live: ``reliable_limits_url``, else the broker's Redis."""
    url = settings_for(app).limits_url
    if url is not None:
        return url
    broker = str(app.conf.broker_url or "")
    if broker.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return broker
    scheme = broker.split("://", 1)[0]
    raise ImproperlyConfigured(
        f"limits=[...] need somewhere every worker sees: the broker ({scheme}) is not "
        f"Redis, so set {as_written(app, 'reliable_limits_url')} to a Redis URL, or to "
        "'store' to keep them in the SQL store"
    )


def backend_for(app: Celery) -> Backend:
    """The app's limit backend in this process (built once per process: a forked pool
    child builds its own connections)."""
    found: tuple[int, Backend] | None = app.__dict__.get(_BACKEND_ATTR)
    if found is not None and found[0] == os.getpid():
        return found[1]
    with _lock:
        found = app.__dict__.get(_BACKEND_ATTR)
        if found is None or found[0] != os.getpid():
            url = limits_url(app)
            backend: Backend
            if url == "store":
                from celery_reliable.store import require_store

                backend = require_store(app, "reliable_limits_url = 'store'").limits
            else:
                from celery_reliable.limits.redis_slots import RedisSlots

                backend = RedisSlots(url)
            found = (os.getpid(), backend)
            setattr(app, _BACKEND_ATTR, found)
    return found[1]


def forget_backend(app: Celery) -> None:
    found = app.__dict__.pop(_BACKEND_ATTR, None)
    if found is not None and found[0] == os.getpid():
        found[1].close()


@dataclass(frozen=True)
class ClassSlots:
    """A task class's limits with their spans (ms), computed when the class is bound."""

    limits: TaskLimits
    #: Per limit: kind ("c"/"r"), n, span in ms.
    shapes: tuple[tuple[str, int, int], ...]
    #: The parts of every take, when no key needs an argument (built once, here: the
    #: same tuple each time, which the Redis backend's rendered calls are kept by).
    fixed: tuple[Part, ...] | None = None

    @classmethod
    def of(cls, limits: TaskLimits, lease_seconds: float) -> ClassSlots:
        shapes = []
        for bound in limits.limits:
            limit = bound.limit
            if isinstance(limit, Concurrency):
                shapes.append(("c", limit.n, int(lease_seconds * 1000)))
            else:
                shapes.append(("r", limit.n, int(getattr(limit, "per", 1.0) * 1000)))
        fixed = _parts(shapes, limits.keys((), {})) if limits.all_fixed else None
        return cls(limits, tuple(shapes), fixed)

    def parts(self, args: Sequence[Any], kwargs: Any) -> tuple[Part, ...]:
        if self.fixed is not None:
            return self.fixed
        return _parts(self.shapes, self.limits.keys(args, kwargs))


def _parts(shapes: Sequence[tuple[str, int, int]], keys: Sequence[str]) -> tuple[Part, ...]:
    return tuple(
        Part(kind, key, n, span) for (kind, n, span), key in zip(shapes, keys, strict=True)
    )


class Held:
    """The slots one execution holds, until it ends."""

    __slots__ = ("at_ms", "backend", "parts", "task_name", "token")

    def __init__(
        self, backend: Backend, token: str, at_ms: int, parts: Sequence[Part], task_name: str
    ) -> None:
        self.backend = backend
        self.token = token
        self.at_ms = at_ms
        self.parts = parts
        self.task_name = task_name

    def give_back(self) -> None:
        """Never raises (it runs as the execution ends, whatever its outcome): a give
        back that fails is logged, and the slots free themselves when their leases end.
        Redis: sent, its answer read later (``redis_slots.py``)."""
        try:
            self.backend.give_back_soon(self.token, self.at_ms, self.parts, self.task_name)
        except Exception:  # a bug of ours must not replace the execution's outcome
            logger.exception(
                "task %s: giving its slots back failed; they free themselves when their lease ends",
                self.task_name,
            )

    def renew(self) -> None:
        try:
            kept = self.backend.renew(self.token, self.parts)
        except LimitsUnavailable as exc:
            logger.warning("task %s: %s", self.task_name, exc)
            return
        wanted = sum(1 for part in self.parts if part.kind == "c")
        if kept < wanted:
            logger.warning(
                "task %s: a concurrency slot's lease ran out while it ran (no beat for longer "
                "than the lease): another execution may hold it now",
                self.task_name,
            )


@dataclass(frozen=True)
class Waiting:
    """Every slot was not free: wait this long, then try again."""

    seconds: float
    since_ms: int
    reason: str


def take(task: Any, job: str, args: Sequence[Any], kwargs: Any, since_ms: int) -> Held | Waiting:
    """Take a slot of every limit of the task, or none: LimitKeyError for arguments its
    keys cannot be rendered from, LimitsUnavailable when the backend is down."""
    class_slots: ClassSlots = task._reliable_slots
    task_name = task.name
    parts = class_slots.parts(args, kwargs)
    backend = backend_for(task.app)
    # Tells two executions of one job apart (a redelivery while the first still runs);
    # 48 random bits, as uuid4's first twelve digits were, at a fifth of its cost.
    token = f"{job}:{os.urandom(6).hex()}"
    got = backend.take(job, since_ms, token, parts)
    if isinstance(got, Taken):
        return Held(backend, token, got.at_ms, parts, task_name)
    limit = class_slots.limits.limits[got.blocked].limit
    key = parts[got.blocked].key.split(":", 1)[1]
    # As told, no random part: the backend expects the waiter back at that time (it
    # keeps a free slot for it from then on, parts.py), and waiters at different places
    # in line are told different times already.
    seconds = got.wait_ms / 1000
    return Waiting(
        seconds,
        got.since_ms,
        f"limited by {limit.describe()} on {key!r}: waits {seconds:.2f}s for a slot",
    )
