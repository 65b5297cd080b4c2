"""Validation of the task options ReliableTask adds (``timeout``, ``max_snoozes``, ...).

Run once when a task class is built, so that a typo or a bad value fails when the
app is finalized (worker start, ``celery reliable check``, first use), not in the
middle of the night on the first execution that reaches it.

Pure module: the caller passes what Celery's ``Task`` knows, so no Celery import.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Options ReliableTask adds, with their defaults.
RELIABLE_OPTIONS: dict[str, object] = {
    "timeout": None,
    "max_snoozes": 10,
    "heartbeat_timeout": None,
    "waive": None,
}

#: The production-readiness gates ``celery reliable check`` audits, in display order.
#: Their names are public: output, ``--json`` and ``waive={...}`` use them.
GATES = ("classified", "bounded", "idempotency", "timeout", "delivery", "metrics", "sentry")

#: Options Celery's ``app.task()`` consumes or documents that are not ``Task``
#: attributes; they are known names too, so a typo of one is caught.
CELERY_DECORATOR_OPTIONS = frozenset(
    {
        "autoretry_for",
        "base",
        "bind",
        "dont_autoretry_for",
        "filter",
        "lazy",
        "pydantic",
        "pydantic_context",
        "pydantic_dump_kwargs",
        "pydantic_strict",
        "retry_backoff",
        "retry_backoff_max",
        "retry_jitter",
        "retry_kwargs",
        "shared",
        "queue",
    }
)

#: Closeness (difflib ratio) from which an unknown name is taken for a typo of a known one.
TYPO_CUTOFF = 0.8


def timeout_grace(timeout: float) -> float:
    """Seconds between the soft limit (``timeout``) and the hard ``time_limit``.

    max(5 s, 10 % of the timeout): time for the task to roll back, release its claim
    and re-publish its retry after ``SoftTimeLimitExceeded`` is raised.
    """
    return max(5.0, timeout * 0.1)


def heartbeat_grace(heartbeat_timeout: float) -> float:
    """Seconds between ``HeartbeatTimeout`` raised in a silent body and its pool process
    killed, when the body does not end (blocked in code that never returns to Python).

    The timeout itself, within 2 s to 30 s: time to roll back and re-publish, as
    ``timeout_grace`` gives after the soft time limit.
    """
    return max(2.0, min(heartbeat_timeout, 30.0))


@dataclass(frozen=True)
class TimeLimits:
    soft_time_limit: float
    time_limit: float


def check_typos(own: Mapping[str, object], known: Iterable[str], owner: str) -> None:
    """Reject a public option that is not known but is close to one that is.

    Only plain values are options: methods, properties and other descriptors in a
    class-based task's body are the task's own code (``def serialize(self)`` is not a
    misspelt ``serializer``).
    """
    known_set = set(known)
    for name, value in own.items():
        if name.startswith("_") or name in known_set:
            continue
        if callable(value) or hasattr(value, "__get__"):
            continue
        close = difflib.get_close_matches(name, known_set, n=1, cutoff=TYPO_CUTOFF)
        if close:
            raise TypeError(
                f"{owner}: unknown task option {name!r}; did you mean {close[0]!r}? "
                "(ReliableTask rejects names that look like a misspelt option)"
            )


def _number(owner: str, name: str, value: object, *, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an int" if integer else "a number"
        raise ValueError(f"{owner}: {name} must be {kind}, got {value!r}")
    if integer and not isinstance(value, int):
        raise ValueError(f"{owner}: {name} must be an int, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    return float(value)


def check_timeout(
    owner: str, timeout: object, soft_time_limit: object, time_limit: object
) -> TimeLimits | None:
    """``timeout=N`` -> soft limit N, hard limit N + grace. Conflicts are errors."""
    if timeout is None:
        return None
    seconds = _number(owner, "timeout", timeout)
    if seconds <= 0:
        raise ValueError(f"{owner}: timeout must be > 0 seconds, got {timeout!r}")
    if soft_time_limit is not None or time_limit is not None:
        raise ValueError(
            f"{owner}: give either timeout= or soft_time_limit=/time_limit=, not both "
            f"(timeout={timeout!r}, soft_time_limit={soft_time_limit!r}, "
            f"time_limit={time_limit!r})"
        )
    return TimeLimits(soft_time_limit=seconds, time_limit=seconds + timeout_grace(seconds))


def check_heartbeat_timeout(owner: str, value: object) -> float | None:
    """``heartbeat_timeout=N``: seconds a body may go without ``self.heartbeat()``."""
    if value is None:
        return None
    seconds = _number(owner, "heartbeat_timeout", value)
    if seconds <= 0:
        raise ValueError(f"{owner}: heartbeat_timeout must be > 0 seconds, got {value!r}")
    return seconds


def check_max_snoozes(owner: str, value: object) -> int:
    number = _number(owner, "max_snoozes", value, integer=True)
    if number < 0:
        raise ValueError(f"{owner}: max_snoozes must be >= 0, got {value!r}")
    return int(number)


def check_waive(owner: str, value: object, *, option: str = "waive") -> dict[str, str]:
    """``waive={"idempotency": "why it is safe to run twice"}``: known gates, real reasons.

    The app-wide ``reliable_waive`` setting is checked here too (``option``, with no
    ``owner``), so both say the same of the same mistake.
    """
    name = f"{owner}: {option}" if owner else option
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            f"{name} must be a dict of gate -> reason, like "
            f"{{'idempotency': 'why it is safe to run twice'}}; got {value!r}"
        )
    waived: dict[str, str] = {}
    for gate, reason in value.items():
        if gate not in GATES:
            close = difflib.get_close_matches(str(gate), GATES, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"{name} names an unknown gate {gate!r}; {hint}the gates are {', '.join(GATES)}"
            )
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(
                f"{name}[{gate!r}] needs a reason (a non-empty string saying why "
                f"the gate does not apply), got {reason!r}"
            )
        waived[gate] = reason.strip()
    return waived
