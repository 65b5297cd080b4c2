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

A store that cannot be reached then: the ending waits in the broker, as a message of
the task ``celery_reliable.batch_ending`` (registered on every app, like Celery's own
``celery.*`` tasks) sent to the member's queue before the member's message is acked.
Whichever worker takes it counts the ending once the store answers, retrying with a
backoff until then; it is acked late (a worker killed while it holds it leaves it to
the next), and counting is once per task id, so the ending message and a redelivered
member that ends again cannot count twice. Nothing of it is held in a process's
memory, and the member's body never runs again for it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task

from celery_reliable.batches.tally import EndingsList, encode, endings_list_for
from celery_reliable.errors import BatchError, StoreUnavailable
from celery_reliable.headers import BATCH_HEADER
from celery_reliable.outcomes import Outcome
from celery_reliable.signals import OutcomeEvent, task_outcome

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Connection

    from celery_reliable.batches.context import Transaction
    from celery_reliable.store.batches import BatchRow, OnCompleted

logger = logging.getLogger("celery_reliable.batches")

#: Not an end: the job runs again under the same task id.
_NOT_AN_END = frozenset({Outcome.RETRIED, Outcome.SNOOZED})

#: The task that counts an ending the store could not take when the member ended.
ENDING_TASK = "celery_reliable.batch_ending"
#: Seconds between two tries of it while the store does not answer: doubling, capped.
RETRY_FIRST = 0.5
RETRY_MAX = 30.0


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


def seal(
    app: Celery,
    batch_id: str,
    members: list[tuple[str, str]],
    written: list[tuple[Transaction, list[str]]],
    *,
    abandon: bool,
) -> None:
    """The block exited: the batch's membership is final (``Batch.__exit__``).

    ``members``: every publish of the block (task id, task name); ``written``: those
    ``publish_in`` wrote, by transaction. Their rows are the transaction's: once it
    ended, they are in the store if it committed, and not if it rolled back, so the
    seal counts the rows (``store/batches.py``). A transaction still open (the block
    ran inside it): the seal is written in it too, and commits with its members; if it
    rolls back, the batch is sealed again without them, once it did (its root
    transaction's end: never a savepoint's, never while it is open; in Django, a
    savepoint's rollback that took the seal has it sealed again at the transaction's
    end, committed or not). A block that
    raised (``abandon``) is not sealed in the caller's transaction, which its error may
    have aborted (PostgreSQL), but on the store's own connection (SQLite: in it, as
    the caller's transaction holds the write lock).
    """
    from celery_reliable.store import require_store
    from celery_reliable.store.timeutil import utcnow

    store = require_store(app, "Batch")
    through_outbox = {task_id for _, task_ids in written for task_id in task_ids}
    # One task id is one member, however many times it was published (a message sent
    # twice by hand, like a redelivery, ends once).
    direct = [
        (task_id, name) for task_id, name in dict(members).items() if task_id not in through_outbox
    ]
    still_open = {id(t.key): t for t, _ in written if t.in_transaction()}
    if abandon and all(t.dialect != "sqlite" for t in still_open.values()):
        # The block raised: the batch never completes, whatever becomes of the
        # transaction, which may be aborted (PostgreSQL) by the very error: sealed
        # abandoned on the store's own connection, not in it (the caller's
        # transaction holds no lock of the batch's row: only a seal takes that).
        still_open = {}
    if not still_open:
        store.batches.seal(batch_id, direct, utcnow(), fire_in(app), abandon=abandon)
        return
    if len(still_open) > 1:
        raise BatchError(
            f"batch {batch_id}: its block exits while publish_in members of it are in "
            f"{len(still_open)} transactions still open, and it can be sealed in one "
            "only: commit (or roll back) all but one before the block exits"
        )
    [transaction] = still_open.values()
    transaction.seal(batch_id, direct, utcnow(), fire_in(app), abandon)

    def rolled_back() -> None:
        _seal_after_rollback(app, batch_id, direct, abandon=abandon)

    if not transaction.on_rollback(rolled_back):
        logger.debug(
            "batch %s: sealed in the open transaction of its publish_in members; if it "
            "rolls back, the batch stays open",
            batch_id,
        )


def _seal_after_rollback(
    app: Celery, batch_id: str, direct: list[tuple[str, str]], *, abandon: bool
) -> None:
    """The transaction that held the seal rolled back, with its publish_in members
    (or, in Django, a savepoint of it did): the batch is sealed again, with the
    members that were sent (``direct``, and the rows of publish_in members that
    committed)."""
    from celery_reliable.store import require_store
    from celery_reliable.store.timeutil import utcnow

    try:
        store = require_store(app, "Batch")
        store.batches.seal(batch_id, direct, utcnow(), fire_in(app), abandon=abandon)
    except LookupError:
        return  # sealed already: a later transaction of the session rolled back
    except Exception:
        logger.exception(
            "batch %s: the transaction of its publish_in members rolled back, and the "
            "batch could not be sealed without them; it stays open",
            batch_id,
        )
        return
    logger.info(
        "batch %s: its seal rolled back with the transaction of its publish_in "
        "members (or a savepoint of it); sealed again with the %d members sent "
        "directly and those committed",
        batch_id,
        len(direct),
    )


def _on_outcome(sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
    if event is None:
        return
    headers = getattr(event.request, "headers", None)
    batch_id = headers.get(BATCH_HEADER) if isinstance(headers, dict) else None
    if batch_id is None or event.outcome in _NOT_AN_END:
        return
    app, task_id = event.task.app, str(event.task_id)
    endings = endings_list_for(app)
    if endings is not None and _pushed(endings, str(batch_id), task_id, event):
        return
    try:
        count_ending(app, str(batch_id), task_id, event.task_name, event.outcome.value)
    except StoreUnavailable as exc:
        delivery = getattr(event.request, "delivery_info", None)
        count_later(
            app,
            str(batch_id),
            task_id,
            event.task_name,
            event.outcome.value,
            delivery if isinstance(delivery, dict) else None,
            exc,
        )
    except Exception:
        logger.exception(
            "batch %s: could not count the end (%s) of member %s[%s]",
            batch_id,
            event.outcome.value,
            event.task_name,
            event.task_id,
        )


def _pushed(endings: EndingsList, batch_id: str, task_id: str, event: OutcomeEvent) -> bool:
    """The ending pushed to the broker's Redis, to be counted in a group (``tally.py``);
    False when Redis did not take it (then it is counted in the store directly)."""
    from celery_reliable.store.timeutil import utcnow

    ending = encode(batch_id, task_id, event.task_name, event.outcome.value, utcnow())
    try:
        endings.push(ending)
    except Exception as exc:
        logger.warning(
            "batch %s: Redis did not take the end (%s) of member %s[%s] (%s); counted in "
            "the store directly",
            batch_id,
            event.outcome.value,
            event.task_name,
            task_id,
            exc,
        )
        return False
    return True


def count_ending(
    app: Celery, batch_id: str, task_id: str, task_name: str, outcome: str
) -> BatchRow | None:
    """Count one member's ending (once per task id); the batch when it completed it."""
    from celery_reliable.store import require_store
    from celery_reliable.store.timeutil import utcnow

    store = require_store(app, "a batch member")
    return store.batches.member_ended(batch_id, task_id, task_name, outcome, utcnow(), fire_in(app))


def count_later(  # noqa: PLR0917 - one member's ending, and where it came from
    app: Celery,
    batch_id: str,
    task_id: str,
    task_name: str,
    outcome: str,
    delivery: dict[str, Any] | None,
    error: StoreUnavailable,
) -> None:
    """The store did not answer: the ending goes to the broker, as a message of
    :data:`ENDING_TASK` to the member's own queue (a worker of this app consumes it),
    sent before the member's message is acked. ``delivery``: the member's
    ``delivery_info``; the ending goes the way it came, by its exchange and routing
    key (a routing key is a queue's name only on the default exchange: on RabbitMQ a
    queue bound otherwise would never see it)."""
    from celery_reliable.store import store_for

    store = store_for(app)
    if store is not None:
        store.outage.failed(error)
    route = _route_of(delivery)
    try:
        app.send_task(ENDING_TASK, args=(batch_id, task_id, task_name, outcome), **route)
    except Exception:
        logger.exception(
            "batch %s: the end (%s) of member %s[%s] is not counted: the store does not "
            "answer (%s) and the broker did not take it for later; `celery reliable "
            "batch show %s` names the member",
            batch_id,
            outcome,
            task_name,
            task_id,
            error,
            batch_id,
        )
        return
    logger.warning(
        "batch %s: the store does not answer (%s); the end (%s) of member %s[%s] waits "
        "in the broker (%s to %s) and is counted once it answers",
        batch_id,
        error,
        outcome,
        task_name,
        task_id,
        ENDING_TASK,
        ", ".join(f"{k} {v}" for k, v in route.items() if k != "declare") or "the default queue",
    )


def _route_of(delivery: dict[str, Any] | None) -> dict[str, Any]:
    """``send_task``'s options that send a message where the member's came from: its
    exchange and routing key (nothing declared: the member's queue exists, bound), or,
    from the default exchange, the queue its routing key names."""
    exchange = (delivery or {}).get("exchange")
    routing_key = (delivery or {}).get("routing_key")
    if exchange and routing_key:
        return {"exchange": str(exchange), "routing_key": str(routing_key), "declare": []}
    if routing_key:
        return {"queue": str(routing_key)}
    return {}


@shared_task(
    name=ENDING_TASK,
    bind=True,
    base=Task,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
)
def batch_ending(
    self: Task[Any, None], batch_id: str, task_id: str, task_name: str, outcome: str
) -> None:
    """Count an ending the store could not take when its member ended
    (:func:`count_later`); retried until the store answers."""
    from celery_reliable.store import require_store

    store = require_store(self.app, "a batch member's ending")
    try:
        count_ending(self.app, batch_id, task_id, task_name, outcome)
    except StoreUnavailable as exc:
        store.outage.failed(exc)
        tries = int(self.request.retries or 0)
        raise self.retry(countdown=min(RETRY_MAX, RETRY_FIRST * 2**tries)) from None
    store.outage.answered()
    logger.info(
        "batch %s: the end (%s) of member %s[%s] counted, the store answering again",
        batch_id,
        outcome,
        task_name,
        task_id,
    )


task_outcome.connect(_on_outcome, weak=False)
