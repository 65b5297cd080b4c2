"""Wait strategies: how long to wait before the next attempt of a retry rule.

A strategy is called with the rule's attempt number (1 for the first failed
execution) and returns the *base* delay in seconds. Jitter and an exception's
``retry_after`` are applied on top by :func:`compute_delay`, once, for every kind of
``wait`` (strategy, number or callable), so every rule gets the same guarantees:

* the delay is always > 0 (no retry fires at 0 s, see :data:`MIN_DELAY`);
* jitter is only ever *added*: ``base <= delay <= base * (1 + jitter)``;
* a strategy's ``cap`` bounds the base delay; jitter may add its fraction on top, so
  that retries that all reached the cap still spread out;
* an exception with a numeric ``retry_after`` (seconds) is never retried sooner.

Pure module: no Celery import.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

logger = logging.getLogger("celery_reliable.backoff")

#: The floor of every delay, in seconds. A callable ``wait`` that returns 0, a negative
#: number or something that is not a number gets this instead (and a log line).
MIN_DELAY = 1.0

#: The ceiling of every delay: 30 days. An uncapped strategy reaches it only in very
#: long rules; a broker holding an ETA that far out is a problem of its own.
MAX_DELAY = 30 * 24 * 3600.0

#: Default jitter: up to 15 % of the delay, added.
DEFAULT_JITTER = 0.15


@runtime_checkable
class WaitStrategy(Protocol):
    """A named backoff: ``strategy(attempt) -> seconds`` (base delay, before jitter)."""

    def __call__(self, attempt: int) -> float: ...

    def describe(self) -> str: ...


#: What ``retry_on(wait=...)`` accepts after normalisation: ``(attempt, exc) -> seconds``.
WaitFunction = Callable[[int, BaseException], float]


def _positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Exponential:
    """``factor * base ** (attempt - 1)`` seconds, at most ``cap``.

    With the defaults: 1, 2, 4, 8, ... seconds, capped at 600 s (Celery's
    ``retry_backoff_max``).
    """

    base: float = 2.0
    factor: float = 1.0
    cap: float | None = 600.0

    def __post_init__(self) -> None:
        # Floats, so base ** attempt overflows to a float (caught) instead of growing
        # an exact int of thousands of digits.
        object.__setattr__(self, "base", _positive("exponential(base=)", self.base))
        object.__setattr__(self, "factor", _positive("exponential(factor=)", self.factor))
        if self.base < 1:
            raise ValueError(f"exponential(base=) must be >= 1, got {self.base!r}")
        if self.cap is not None:
            _positive("exponential(cap=)", self.cap)

    def __call__(self, attempt: int) -> float:
        # Compute in log space first: base ** attempt overflows a float near attempt 1024.
        exponent = max(attempt - 1, 0)
        if self.cap is not None and exponent * math.log(self.base) + math.log(
            self.factor
        ) >= math.log(self.cap):
            return self.cap
        try:
            delay = self.factor * self.base**exponent
        except OverflowError:
            delay = math.inf
        return delay if self.cap is None else min(delay, self.cap)

    def describe(self) -> str:
        return f"exponential(base={self.base:g}, factor={self.factor:g}, cap={_fmt(self.cap)})"


@dataclass(frozen=True)
class Polynomial:
    """``attempt ** exponent + constant`` seconds (Active Job's ``:polynomially_longer``).

    With the defaults: 3, 18, 83, 258, ... seconds. ``cap`` is off unless given.
    """

    exponent: float = 4.0
    constant: float = 2.0
    cap: float | None = None

    def __post_init__(self) -> None:
        _positive("polynomial(exponent=)", self.exponent)
        _positive("polynomial(constant=)", self.constant, allow_zero=True)
        if self.cap is not None:
            _positive("polynomial(cap=)", self.cap)

    def __call__(self, attempt: int) -> float:
        try:
            delay: float = float(max(attempt, 1)) ** self.exponent + self.constant
        except OverflowError:
            delay = math.inf
        return delay if self.cap is None else min(delay, self.cap)

    def describe(self) -> str:
        return (
            f"polynomial(exponent={self.exponent:g}, constant={self.constant:g}, "
            f"cap={_fmt(self.cap)})"
        )


@dataclass(frozen=True)
class Fixed:
    """The same number of seconds before every attempt."""

    seconds: float

    def __post_init__(self) -> None:
        _positive("fixed(seconds)", self.seconds)

    def __call__(self, attempt: int) -> float:
        return self.seconds

    def describe(self) -> str:
        return f"fixed({self.seconds:g})"


def exponential(base: float = 2, factor: float = 1, cap: float | None = 600) -> Exponential:
    """``factor * base ** (attempt - 1)`` seconds, capped at ``cap`` (default 600 s)."""
    return Exponential(base=base, factor=factor, cap=cap)


def polynomial(exponent: float = 4, constant: float = 2, cap: float | None = None) -> Polynomial:
    """``attempt ** 4 + 2`` seconds by default, as Active Job's ``:polynomially_longer``."""
    return Polynomial(exponent=exponent, constant=constant, cap=cap)


def fixed(seconds: float) -> Fixed:
    """The same delay before every attempt."""
    return Fixed(seconds=seconds)


def _fmt(value: float | None) -> str:
    return "None" if value is None else f"{value:g}"


@dataclass(frozen=True)
class Wait:
    """A normalised ``wait``: what a rule keeps, whatever the user passed."""

    function: WaitFunction
    description: str

    def base_delay(self, attempt: int, exc: BaseException) -> float:
        # A user's callable may return anything; compute_delay checks it.
        delay: float = self.function(attempt, exc)
        return delay


def normalize_wait(wait: object) -> Wait:
    """Turn ``retry_on(wait=...)`` into a :class:`Wait`, or raise at declaration time."""
    if isinstance(wait, WaitStrategy):
        strategy = wait
        return Wait(lambda attempt, exc: strategy(attempt), strategy.describe())
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        strategy = fixed(wait)
        return Wait(lambda attempt, exc: strategy(attempt), strategy.describe())
    if callable(wait):
        function: WaitFunction = wait
        name = getattr(wait, "__qualname__", None) or repr(wait)
        return Wait(function, f"callable {name}")
    raise TypeError(
        "wait must be a strategy from celery_reliable.backoff, a number of seconds "
        f"or a callable (attempt, exc) -> seconds; got {wait!r}"
    )


def normalize_jitter(jitter: object) -> float:
    """``True`` -> 15 %, ``False``/``None`` -> 0, a float in [0, 1] as given."""
    if jitter is True:
        return DEFAULT_JITTER
    if jitter is False or jitter is None:
        return 0.0
    if isinstance(jitter, (int, float)) and math.isfinite(jitter) and 0 <= jitter <= 1:
        return float(jitter)
    raise ValueError(f"jitter must be a fraction between 0 and 1 (or a bool), got {jitter!r}")


def retry_after_of(exc: BaseException) -> float | None:
    """An exception's ``retry_after`` attribute, when it is a usable number of seconds."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def apply_jitter_and_floor(
    base: float,
    jitter: float,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float:
    """The final delay: ``base`` plus up to ``jitter * base``, never below ``retry_after``.

    A ``base`` that is not a positive number is replaced by :data:`MIN_DELAY`; one past
    :data:`MAX_DELAY` (an uncapped strategy late in a long rule) is cut to it. A
    ``retry_after`` is the server's word and is honoured even past :data:`MAX_DELAY`.
    """
    delay = as_delay(base)
    delay = MIN_DELAY if delay is None else min(delay, MAX_DELAY)
    if retry_after is not None and delay < retry_after:
        # The server said when: honour it, and keep the jitter so that clients told
        # the same retry_after do not all come back in the same millisecond.
        delay = retry_after
    return delay + delay * jitter * rand()


def as_delay(base: object) -> float | None:
    """A wait's return value as seconds (> 0, possibly infinite), or None if unusable."""
    if isinstance(base, bool) or not isinstance(base, (int, float)):
        return None
    try:
        value = float(base)
    except OverflowError:  # an int too large for a float: as good as infinite
        value = math.inf if base > 0 else -math.inf
    if math.isnan(value) or value <= 0:
        return None
    return value


def compute_delay(
    wait: Wait,
    attempt: int,
    exc: BaseException,
    jitter: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before the next attempt of a rule (jitter and retry_after applied).

    A user's ``wait`` callable that raises or returns something unusable must not turn
    a planned retry into a crash: it is logged and :data:`MIN_DELAY` is used.
    """
    try:
        base = wait.base_delay(attempt, exc)
    except Exception:
        logger.exception(
            "wait %s raised for attempt %d; waiting %gs", wait.description, attempt, MIN_DELAY
        )
        base = MIN_DELAY
    if as_delay(base) is None:
        logger.warning(
            "wait %s returned %r for attempt %d; waiting %gs instead",
            wait.description,
            base,
            attempt,
            MIN_DELAY,
        )
    return apply_jitter_and_floor(base, jitter, retry_after_of(exc), rand)


def delay_table(strategy: WaitStrategy, attempts: int = 10) -> list[float]:
    """Base delays for attempts 1..n (the docs print these)."""
    return [strategy(n) for n in range(1, attempts + 1)]
