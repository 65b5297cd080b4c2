"""Idempotency receipts around one execution: claim before the body, complete after.

What a claim attempt can decide, before the body runs:

* the key is new (or its holder's lease expired): the execution owns it and runs;
* the key already succeeded: ``DUPLICATE``, with the stored result as the result;
  but while ``atomic()`` committed it and its execution, lease live, has not stored the
  result yet: ``SNOOZED``, as for a key in progress (unless this is that execution's
  own message again: its holder is over, and the duplicate returns ``None``);
* the key is in progress elsewhere with a live lease: ``SNOOZED`` until about then;
* the same key with another payload: ``DISCARDED`` with ``IdempotencyConflict``;
* the key cannot be computed from the arguments: ``DISCARDED``;
* the store cannot be reached: ``StoreUnavailable``, which the built-in rule retries
  (the body never runs without its claim).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from celery_reliable.errors import IdempotencyConflict, IdempotencyKeyError, StoreUnavailable
from celery_reliable.idempotency import KeySpec
from celery_reliable.options import heartbeat_grace
from celery_reliable.store import Claim, Receipt, Store, require_store
from celery_reliable.store.receipts import SUCCEEDED
from celery_reliable.store.timeutil import utcnow

if TYPE_CHECKING:
    from celery_reliable.task import ReliableTask

__all__ = ["Busy", "Duplicate", "ReceiptHolder", "Refused"]

logger = logging.getLogger("celery_reliable.receipts")

#: Seconds a claim's lease outlives the task's hard time limit: a worker still alive
#: is always killed by the hard limit before its lease can be taken over.
LEASE_MARGIN = 5.0

#: The lease of an outbox message's receipt when its task has no time limit (nor a
#: heartbeat): nothing bounds how long a live execution runs, so a long one, to make a
#: second copy of the message wait (SNOOZED) rather than run beside it; a worker killed
#: mid-run leaves the job to be taken over after this.
OUTBOX_LEASE = 3600.0

#: The payload hash of an outbox message's receipt: the task id is the job, whatever
#: its arguments (a Celery retry may change them), so two copies never conflict.
OUTBOX_PAYLOAD = "outbox"


def lease_seconds(time_limit: float) -> float:
    return time_limit + LEASE_MARGIN


def heartbeat_lease_seconds(heartbeat_timeout: float) -> float:
    """The lease of a task with a heartbeat: renewed by each beat (at most a second
    apart), it outlives a silent execution's interrupt and kill (timeout + grace)."""
    return heartbeat_timeout + heartbeat_grace(heartbeat_timeout) + LEASE_MARGIN


@dataclass(frozen=True)
class Duplicate:
    """The key already succeeded: skip the body, return this."""

    value: Any
    receipt: Receipt


@dataclass(frozen=True)
class Busy:
    """The key is held by a live execution elsewhere, for ``remaining`` more seconds."""

    receipt: Receipt
    remaining: float

    def retry_in(self, snoozes_done: int, max_snoozes: int) -> float:
        """When to look again: soon at first (the holder is often nearly done: 1, 2,
        4 s...), never much past the holder's lease, and never so soon that the snoozes
        left could not reach past it, when a dead holder's key can be taken over."""
        left = max(max_snoozes - snoozes_done, 1)
        reach = self.remaining + 1.0  # a second past the lease's end
        soon = 2.0 ** min(snoozes_done, 60)
        # How far the other snoozes left reach if they keep doubling.
        # (capped: 2**60 s is past any lease, and a large max_snoozes must not overflow)
        rest = 2.0 ** min(snoozes_done + left, 60) - 2.0 ** min(snoozes_done + 1, 60)
        if soon + rest >= reach:
            return max(1.0, min(soon, reach))
        return max(1.0, reach / left)


@dataclass(frozen=True)
class Refused:
    """The job cannot be run under its key (conflict, key not computable)."""

    exc: Exception


class ReceiptHolder:
    """The idempotency receipt of one execution, from claim to completion or release.

    The one owner of the lifecycle: ``Execution`` takes it before the body and
    completes or releases it after; ``ReliableTask.atomic()`` completes it inside the
    user's own transaction (or, once the job entered a step, holds it there). A store
    that fails after the claim never changes the outcome: the work is done (or not)
    either way, and the lease frees the key.
    """

    __slots__ = ("claim", "task")

    def __init__(self, task: ReliableTask, claim: Claim) -> None:
        self.task = task
        self.claim = claim

    @classmethod
    def take(
        cls, task: ReliableTask, task_id: str, args: Any, kwargs: Any
    ) -> ReceiptHolder | Duplicate | Busy | Refused:
        """Claim the key of this execution; raises ``StoreUnavailable``. A task without
        an ``idempotency_key`` claims its task id: a message from the outbox, which a
        relay may have published twice (the task's own key, when it has one, already
        makes a second copy a DUPLICATE)."""
        spec: KeySpec | None = task._reliable_key
        if spec is None:
            key, payload, lease = task_id, OUTBOX_PAYLOAD, outbox_lease(task)
        else:
            try:
                key, payload = spec.key_and_hash(tuple(args or ()), dict(kwargs or {}))
            except IdempotencyKeyError as exc:
                return Refused(exc)
            lease = task._reliable_lease
        store = _store(task)
        try:
            got = store.receipts.claim(task.name, key, payload, task_id, lease)
        except StoreUnavailable as exc:
            store.outage.failed(exc)
            raise
        store.outage.answered()
        if isinstance(got, Claim):
            if got.took_over:
                logger.warning(
                    "task %s[%s]: took over idempotency key %r (the previous claim's lease "
                    "expired: its worker died or stalled); claim #%d",
                    task.name,
                    task_id,
                    key,
                    got.claims,
                )
            return cls(task, got)
        if got.payload_hash != payload:
            return Refused(
                IdempotencyConflict(
                    f"idempotency key {key!r} was first used with other arguments "
                    f"(by task {got.task_id}); refusing to run a different payload under it"
                )
            )
        if got.result_pending and got.task_id != task_id and got.lease_live(utcnow()):
            # atomic() committed; its execution has not stored what the body returns
            # yet, and may still: look again, as for a key in progress. Not when this
            # is the holder's own message come back (a redelivery after its worker
            # died, or its own retry): the execution that would store it is over.
            return Busy(got, _seconds_until(got.lease_expires_at))
        if got.state == SUCCEEDED:
            return Duplicate(_load_result(got), got)
        return Busy(got, _seconds_until(got.lease_expires_at))

    @contextmanager
    def atomic(self, *, complete: bool = True) -> Iterator[Any]:
        """A transaction whose commit also marks the receipt succeeded (``atomic()``).

        With ``complete=False`` (a job that entered a step: its receipt completes when
        the body returns, so that a crash between two items resumes the job instead of
        ending it as a duplicate) the receipt is only held: checked to be still this
        execution's and, with a heartbeat, its lease renewed.

        Raises ``LeaseLost`` inside the transaction if another execution took the key
        over, so that the caller's writes roll back with it.
        """
        task = self.task
        lease = task._reliable_lease if task._reliable_heartbeat_timeout is not None else None
        with _store(task).atomic(self.claim, complete=complete, lease_seconds=lease) as transaction:
            yield transaction

    def complete(self, value: Any) -> None:
        """After the body returned: mark the receipt succeeded (or store its result)."""
        task, claim = self.task, self.claim
        store = _store(task)
        result = encode_result(task.name, value)
        try:
            if claim.completed:
                # In place of the pending mark, even a None: a duplicate waits for it.
                store.receipts.store_result(claim, result)
                return
            if not store.receipts.complete(claim, result):
                logger.error(
                    "task %s[%s]: idempotency key %r was taken over while this execution "
                    "ran (it outlived its lease); its effects outside atomic() may now "
                    "happen twice",
                    task.name,
                    claim.task_id,
                    claim.key,
                )
        except StoreUnavailable as exc:
            if claim.completed:
                logger.error(
                    "task %s[%s]: could not store the result of idempotency key %r (%s); "
                    "a duplicate returns None once this execution's lease expires",
                    task.name,
                    claim.task_id,
                    claim.key,
                    exc,
                )
                return
            # The work is done; only the record of it is missing. The claim stays "in
            # progress" until its lease expires, after which a redelivery would run the
            # body again: at-least-once, as documented.
            logger.error(
                "task %s[%s]: could not mark idempotency key %r succeeded (%s); a "
                "redelivery after the lease would run it again",
                task.name,
                claim.task_id,
                claim.key,
                exc,
            )

    def release(self) -> None:
        """The execution did not succeed: give the key back (a succeeded receipt stays;
        one ``atomic()`` marked keeps no result, so that a duplicate waits no more)."""
        claim = self.claim
        if claim.completed and not claim.result_pending:
            return
        try:
            if claim.completed:
                _store(self.task).receipts.store_result(claim, None)
                return
            _store(self.task).receipts.release(claim)
        except StoreUnavailable as exc:
            logger.error(
                "task %s[%s]: could not release idempotency key %r (%s); it is free again "
                "when its lease expires",
                self.task.name,
                claim.task_id,
                claim.key,
                exc,
            )


def outbox_lease(task: ReliableTask) -> float:
    """The lease of an outbox message's receipt: the task's own (its heartbeat's or its
    hard time limit's, as for an idempotency key), else :data:`OUTBOX_LEASE`. Read once
    per task class (the worker's settings are final by its first execution)."""
    lease = task._reliable_lease
    if lease:
        return lease
    from celery_reliable.compat.celery_internals import time_limits

    _, hard = time_limits(task, task.app)
    lease = lease_seconds(hard) if hard else OUTBOX_LEASE
    type(task)._reliable_lease = lease
    return lease


def _seconds_until(when: datetime | None) -> float:
    if when is None:
        return 1.0
    return (when - utcnow()).total_seconds()


def _load_result(receipt: Receipt) -> Any:
    if receipt.result is None or receipt.result_pending:
        # No result, or its execution died before storing it (its lease expired).
        return None
    try:
        return kombu_loads(receipt.result)
    except ValueError:
        logger.warning(
            "receipt %s/%s: stored result is not JSON; returning None",
            receipt.task_name,
            receipt.key,
        )
        return None


def encode_result(task_name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        return kombu_dumps(value)
    except (TypeError, ValueError):
        logger.warning(
            "task %s: result %r is not JSON-serializable; the receipt keeps no result "
            "(a DUPLICATE returns None)",
            task_name,
            type(value).__name__,
        )
        return None


def _store(task: ReliableTask) -> Store:
    return require_store(task.app, f"task {task.name}: idempotency_key")
