"""A member's ending counted, and the callbacks fired by whoever completes the batch.

A receiver of ``task_outcome`` (connected when ``celery_reliable`` is imported): an
execution whose message carries a batch's id (``headers.BATCH_HEADER``) and whose
outcome ends it (not RETRIED, not SNOOZED) is counted in the store, once per task id
(``store/batches.py``). Any other execution pays one header lookup here.

The callbacks are fired through the outbox: the winner of the batch's completion
writes their messages to ``reliable_outbox`` in the same transaction that marks the
batch completed, and the relay (a thread in every worker) publishes them once it
commits. So a process killed anywhere loses neither the completion nor the callbacks,
and a callback published twice by relays runs once (the outbox's receipt on its task
id). Callbacks are ordinary tasks: their own rules, retries and dead letters.

The ending is counted when the outcome is sent: after a retry's re-publish, before
the message is acked. A worker killed after the count and before the ack runs the
message again; that second ending is not counted (the first one stands).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery_reliable.headers import BATCH_HEADER
from celery_reliable.outcomes import Outcome
from celery_reliable.signals import OutcomeEvent, task_outcome

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection

    from celery_reliable.store.batches import BatchRow, OnCompleted

logger = logging.getLogger("celery_reliable.batches")

#: Not an end: the job runs again under the same task id.
_NOT_AN_END = frozenset({Outcome.RETRIED, Outcome.SNOOZED})


def serialized(sig: Any) -> str | None:
    """A callback's signature as the batch's row keeps it (kombu's JSON: dates and
    UUIDs in its options survive)."""
    if sig is None:
        return None
    from kombu.utils.json import dumps

    return str(dumps(dict(sig)))


def summary_of(batch: BatchRow, failed: list[str]) -> dict[str, Any]:
    """What each callback gets as its first argument (DESIGN §4)."""
    return {
        "batch": batch.id,
        "description": batch.description,
        "total": batch.total or 0,
        "outcomes": dict(batch.outcomes),
        "failed": list(failed),
    }


def fire_in(app: Celery) -> OnCompleted:
    """What the completing writer does inside its transaction: the callbacks'
    messages, built by Celery as ``apply_async`` would build them, written to the
    outbox on that transaction's connection."""

    def fire(connection: Connection, batch: BatchRow, failed: list[str]) -> None:
        from celery import signature
        from celery.canvas import Signature
        from kombu.utils.json import loads

        from celery_reliable.outbox.message import capturing_for
        from celery_reliable.store.outbox import write_in
        from celery_reliable.store.timeutil import utcnow

        summary = summary_of(batch, failed)
        callbacks = [("on_complete", batch.on_complete)]
        if batch.succeeded:
            callbacks.append(("on_success", batch.on_success))
        with capturing_for(app) as capture:
            for which, raw in callbacks:
                if raw is None:
                    continue
                sig = signature(loads(raw), app=app)
                options: dict[str, Any] = {}
                if type(sig) is Signature:  # a task's, not a canvas: a known task id
                    options["task_id"] = f"{batch.id}-{which}"
                sig.apply_async(args=(summary,), **options)
        if capture.messages:
            now = utcnow()
            write_in(connection, [message.columns(now) for message in capture.messages])
        logger.info(
            "batch %s completed: %d members, %s; callbacks %s",
            batch.id,
            batch.total or 0,
            ", ".join(f"{n} {o}" for o, n in batch.outcomes.items() if n) or "none",
            ", ".join(m.task_name for m in capture.messages) or "none",
        )

    return fire


def seal(app: Celery, batch_id: str, members: list[tuple[str, str]], *, abandon: bool) -> None:
    """The block exited: the batch's membership is final (``Batch.__exit__``)."""
    from celery_reliable.store import require_store
    from celery_reliable.store.timeutil import utcnow

    store = require_store(app, "Batch")
    # One task id is one member, however many times it was published (a message sent
    # twice by hand, like a redelivery, ends once).
    distinct = list(dict(members).items())
    store.batches.seal(batch_id, distinct, utcnow(), fire_in(app), abandon=abandon)


def _on_outcome(sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
    if event is None:
        return
    headers = getattr(event.request, "headers", None)
    batch_id = headers.get(BATCH_HEADER) if isinstance(headers, dict) else None
    if batch_id is None or event.outcome in _NOT_AN_END:
        return
    try:
        member_ended(event.task.app, str(batch_id), event)
    except Exception:
        logger.exception(
            "batch %s: could not count the end (%s) of member %s[%s]",
            batch_id,
            event.outcome.value,
            event.task_name,
            event.task_id,
        )


def member_ended(app: Celery, batch_id: str, event: OutcomeEvent) -> None:
    from celery_reliable.store import require_store
    from celery_reliable.store.timeutil import utcnow

    store = require_store(app, "a batch member")
    store.batches.member_ended(
        batch_id,
        str(event.task_id),
        event.task_name,
        event.outcome.value,
        utcnow(),
        fire_in(app),
    )


task_outcome.connect(_on_outcome, weak=False)
