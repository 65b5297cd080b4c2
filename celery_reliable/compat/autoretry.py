"""Celery's own ``autoretry_for`` on a task, read the way Celery's wrapper applies it.

docs/migrating.md tells users to put ``base=ReliableTask`` on a task first and change
nothing else, so ``celery reliable check`` and ``report`` meet tasks that still retry
with Celery's options. Under ReliableTask those keep their meaning
(docs/compatibility.md): Celery's wrapper (``celery/app/autoretry.py``) runs inside
ReliableTask's, retries an error of ``autoretry_for`` (not of ``dont_autoretry_for``)
up to ``max_retries`` times, each retry ending ``RETRIED``; when Celery gives up, the
task's rules see the error, and with no rule for it the outcome is ``EXHAUSTED``
(``Execution._autoretry_gave_up``). The audit reads the same options here, so that it
says what a worker will do.

Pure module: reads the task's attributes, no Celery import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_reliable.policy import RetryStep, rule_label

#: Celery's ``retry_backoff_max`` default (seconds).
BACKOFF_MAX = 600
#: Past this many doublings every backoff is at ``retry_backoff_max``; stops computing
#: ``2 ** n`` for a ``max_retries`` in the thousands.
_DOUBLINGS = 64


@dataclass(frozen=True)
class Autoretry:
    """A task's ``autoretry_for`` and the options Celery's wrapper reads with it."""

    exc_types: tuple[type[BaseException], ...]
    #: ``dont_autoretry_for``: errors of these classes go straight to the rules.
    excluded: tuple[type[BaseException], ...]
    #: Retries Celery makes before it gives up: ``retry_kwargs["max_retries"]`` (which
    #: Celery passes to ``self.retry()``), else the task's ``max_retries``. None: never.
    max_retries: int | None
    #: ``retry_backoff`` as Celery uses it: the factor in seconds, 0 when off.
    backoff: int
    backoff_max: int
    #: ``retry_jitter``: with backoff, each delay is drawn between 0 and the backoff.
    jitter: bool
    #: Without backoff, every retry's countdown: ``retry_kwargs["countdown"]``, else
    #: the task's ``default_retry_delay``.
    countdown: float
    #: Where ``countdown`` comes from, as the user wrote it.
    countdown_source: str
    #: ``retry_kwargs`` sets an ``eta``: the delays are not known ahead.
    eta: bool = False
    #: Its name in ``OutcomeEvent.rule``: ``autoretry_for(ConnectionError)``.
    label: str = ""

    kind = "autoretry_for"

    @classmethod
    def of(cls, task: Any) -> Autoretry | None:
        """The task's autoretry, or None when it sets no ``autoretry_for``."""
        exc_types = tuple(getattr(task, "autoretry_for", None) or ())
        if not exc_types:
            return None
        kwargs = dict(getattr(task, "retry_kwargs", None) or {})
        # Task.retry(max_retries=None) means "the task's own", as here.
        override = kwargs.get("max_retries")
        max_retries = getattr(task, "max_retries", None) if override is None else override
        backoff = float(getattr(task, "retry_backoff", False) or 0)
        countdown = kwargs.get("countdown")
        source = "countdown" if countdown is not None else "default_retry_delay"
        if countdown is None:
            countdown = getattr(task, "default_retry_delay", None)
        return cls(
            exc_types=exc_types,
            excluded=tuple(getattr(task, "dont_autoretry_for", None) or ()),
            max_retries=None if max_retries is None else int(max_retries),
            # Celery's own arithmetic: int(max(1.0, retry_backoff)) when it is set.
            backoff=int(max(1.0, backoff)) if backoff else 0,
            backoff_max=int(getattr(task, "retry_backoff_max", BACKOFF_MAX)),
            jitter=bool(getattr(task, "retry_jitter", True)),
            countdown=float(countdown or 0),
            countdown_source=source,
            eta=kwargs.get("eta") is not None and not backoff,
            label=rule_label("autoretry_for", exc_types),
        )

    @property
    def attempts(self) -> int | None:
        """Executions, the first included: ``max_retries + 1``."""
        return None if self.max_retries is None else self.max_retries + 1

    def delay(self, retries: int) -> float:
        """The countdown Celery computes for the retry after ``retries`` earlier ones
        (``request.retries``), before jitter: with ``retry_jitter`` it draws a whole
        number of seconds between 0 and this."""
        if not self.backoff:
            return self.countdown
        if retries >= _DOUBLINGS:
            return float(self.backoff_max)
        return float(min(self.backoff_max, self.backoff * 2**retries))

    def schedule(self) -> list[RetryStep]:
        """Each retry's delay, jitter's range included. ``ValueError`` when the delays
        cannot be known ahead: an ``eta``, or no ``max_retries`` (no last retry)."""
        if self.max_retries is None:
            raise ValueError("max_retries=None: Celery retries forever")
        if self.eta:
            raise ValueError("retry_kwargs sets an eta: the delays are not known ahead")
        steps = []
        for attempt in range(1, self.max_retries + 1):
            longest = self.delay(attempt - 1)
            least = 0.0 if self.backoff and self.jitter else longest
            steps.append(RetryStep(attempt=attempt, min_delay=least, max_delay=longest))
        return steps

    def wait_description(self) -> str:
        """The delay options, as Celery's option names."""
        if self.backoff:
            return (
                f"retry_backoff={self.backoff}, retry_backoff_max={self.backoff_max}, "
                f"retry_jitter={self.jitter}"
            )
        if self.eta:
            return "retry_kwargs eta"
        return f"{self.countdown_source}={self.countdown:g}s"

    def describe(self) -> str:
        """``autoretry_for(ConnectionError, max_retries=3, retry_backoff=1, ...)``."""
        names = ", ".join(t.__qualname__ for t in self.exc_types)
        return f"autoretry_for({names}, max_retries={self.max_retries}, {self.wait_description()})"
