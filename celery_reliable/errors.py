"""Exceptions celery_reliable raises or classifies, all under :class:`ReliableError`.

Pure module: ``except ReliableError`` catches everything of ours, and each error says
what to do about it.
"""

from __future__ import annotations


class ReliableError(Exception):
    """The root of every celery_reliable error."""


class StoreUnavailable(ReliableError):
    """The receipts / dead-letter database cannot be reached (or has no schema).

    Raised before a task body runs when its claim cannot be taken; ReliableTask's
    built-in rule retries it with backoff (override with your own ``retry_on``).
    """


class StoreContention(StoreUnavailable):
    """A row kept vanishing between two statements (released or pruned by others, three
    times in a row). Transient like an unreachable store, so the same built-in rule
    retries it."""


class IdempotencyConflict(ReliableError):
    """The same idempotency key arrived with a different payload: the job is DISCARDED."""


class IdempotencyKeyError(ReliableError):
    """The idempotency key could not be computed from the arguments: DISCARDED."""


class LimitKeyError(ReliableError):
    """A limit's key cannot be rendered from the job's arguments (``limits=[...]``)."""


class LimitsUnavailable(StoreUnavailable):
    """Where the limits live (Redis, or the store) cannot be reached: classified like a
    store outage (the built-in rule retries it)."""


class WrongArguments(ReliableError, TypeError):
    """A message's arguments do not fit the task's signature (too many, too few, an
    unknown keyword): the body cannot run with them, now or on any retry. DISCARDED,
    reported, with a dead letter to re-publish once the task or the publisher is fixed.
    """


class ResultNotSerializable(ReliableError):
    """The task returned a value its result backend cannot serialize: the body ran,
    but Celery would store a FAILURE in its place. FAILED, with a dead letter."""


class HeartbeatTimeout(ReliableError):
    """Raised inside a task body that went longer than its ``heartbeat_timeout`` without
    calling ``self.heartbeat()``: a stuck execution, ended long before its time limit.
    Classified by the task's rules like any exception (``retry_on(HeartbeatTimeout)``).
    """

    def __init__(self, message: str = "no heartbeat within the task's heartbeat_timeout") -> None:
        super().__init__(message)


class LeaseLost(ReliableError):
    """This execution's claim was taken over (its lease expired while it ran).

    Raised inside ``self.atomic()`` so the writes roll back; the execution ends
    SNOOZED and a later run finds the other execution's result.
    """


class StepError(ReliableError, RuntimeError):
    """``self.step(name)`` used where a step cannot work: outside an execution of the
    task, inside ``self.atomic()``, not directly in a ``with`` statement, or under a
    name this execution already used. Raised at once, whether or not the step would
    have been skipped, so that a misuse shows on the first run, not on a resume."""


class OutboxError(ReliableError):
    """``publish_in`` cannot write this message where it was asked to (another database
    than the store's, a schema not migrated, a task it cannot take): nothing was
    written; the message says what to change."""


class BatchError(ReliableError):
    """A ``Batch`` used in a way it cannot keep its promise (nested, re-entered, a
    member that cannot report its outcome, an eager app): raised before anything is
    published, or at the publish of the offending task."""


class UniqueKeyError(ReliableError):
    """The unique-enqueue key could not be computed from the arguments."""


class DeadLetterError(ReliableError):
    """A dead letter cannot be retried (unknown id, redacted, already retried)."""


class MissingDependency(ReliableError, ImportError):
    """A configured feature needs a library that is not installed.

    Raised when the worker starts (and by the CLI), never inside a task: the message
    names the pip extra that installs it.
    """

    def __init__(
        self, feature: str, library: str, *, extra: str | None = None, install: str | None = None
    ) -> None:
        self.feature = feature
        self.library = library
        self.extra = extra
        how = install or (
            f"pip install 'celery-reliable[{extra}]'" if extra else f"pip install {library}"
        )
        super().__init__(f"{feature} needs {library}, which is not installed: {how}")


class UnknownTask(ReliableError, LookupError):
    """``check --task`` / ``report`` named a task the app does not have."""
