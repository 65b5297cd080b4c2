"""``with Batch(on_complete=sig, on_success=sig, description=...) as batch:``: the tasks
published inside the block are the batch's members.

How a publish becomes a member: while the block runs, in this thread (or asyncio
task: a context variable), the app's ``send_task_message`` (Celery's closure, wrapped
once per app, as the outbox's capture wraps it: ``delivery/send_hook.py``) stamps the batch's id in
the message's headers (``headers.BATCH_HEADER``) and, once the broker took the
message, adds its task id to the batch. Whatever publishes goes through it:
``delay``, ``apply_async``, signatures, groups and chords (their header tasks), the
outbox's ``publish_in`` (the stamp is in the row). A publish that raised is not a
member. A publish outside any block costs one context-variable read.

At the block's exit the batch is sealed: its members are known, and the one that ends
last (or the seal itself, when every member ended before it, or there is none)
completes it (``store/batches.py``). A ``publish_in`` member is one if its transaction
commits (``publish_in`` tells the batch which transaction, ``context.py``): the seal
counts the members' rows, and is written in that transaction when the block exits
while it is still open (``ending.seal``). A block that raised seals the batch
"abandoned": its members run and are counted, its callbacks never fire.

Decided (``docs/batches.md``):

* No member after the block: a batch is sealed once, at its exit; ``with`` on a
  sealed batch raises :class:`BatchError`. Open a new batch (its ``on_complete`` may be
  the follow-up of another's).
* No nesting in one context: a ``Batch`` opened inside another's block raises
  :class:`BatchError` (a member would have to be counted by two batches, and an inner
  batch's completion is not a task outcome the outer one can count). A member task
  may open a batch of its own while it runs: it is another context.
* Members are ReliableTasks: a task the app knows that is not one cannot report its
  outcome, and its publish raises :class:`BatchError`. Celery's own tasks
  (``celery.*``, e.g. a chord's ``chord_unlock``) are never members. A name the app
  does not know (``send_task``) is taken as a member: it must be a ReliableTask on the
  worker.
* ``task_always_eager``: refused (nothing is published, so nothing would be counted).
"""

from __future__ import annotations

import logging
import uuid
from contextvars import Token
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celery import Celery, current_app
from celery.canvas import Signature

from celery_reliable.batches.context import current as _current
from celery_reliable.batches.context import current_batch
from celery_reliable.delivery.send_hook import SendTaskMessage, wrap_send_task_message
from celery_reliable.errors import BatchError
from celery_reliable.headers import BATCH_HEADER
from celery_reliable.task import ReliableTask

if TYPE_CHECKING:
    from celery_reliable.batches.context import Transaction

logger = logging.getLogger("celery_reliable.batches")

#: Set on an app's ``AMQP`` once its ``send_task_message`` stamps batches' members.
_INSTALLED = "_reliable_batch_sender"


__all__ = ["Batch", "current_batch"]


class Batch:
    """A set of tasks whose ending fires callbacks once, with a summary.

    ``on_complete``: a signature, run once every member has ended, whatever the
    outcomes. ``on_success``: run once every member has ended and none ended
    DISCARDED, EXHAUSTED or FAILED. Each gets the summary as its first argument::

        {"batch": id, "description": ..., "total": n,
         "outcomes": {"succeeded": n, "duplicate": n, "cancelled": n,
                      "discarded": n, "exhausted": n, "failed": n},
         "failed": [task ids of the DISCARDED, EXHAUSTED and FAILED members]}

    ``app``: the members' app (default: the callbacks', else Celery's current app).
    The batch lives in the app's store (``reliable_database_url``).
    """

    def __init__(
        self,
        on_complete: Signature | None = None,
        on_success: Signature | None = None,
        description: str | None = None,
        *,
        app: Celery | None = None,
    ) -> None:
        for name, value in (("on_complete", on_complete), ("on_success", on_success)):
            if value is not None and not isinstance(value, Signature):
                raise TypeError(
                    f"Batch({name}=...): a signature (task.s(...) or task.si(...)), not "
                    f"{type(value).__name__}"
                )
        if description is not None and not isinstance(description, str):
            raise TypeError(f"Batch(description=...): a str, not {type(description).__name__}")
        self.on_complete = on_complete
        self.on_success = on_success
        self.description = description
        self.app: Celery = app or _app_of(on_complete, on_success)
        #: The batch's id (also the ``batch`` of the summary, and what ``batch show``
        #: takes).
        self.id = str(uuid.uuid4())
        self._members: list[tuple[str, str]] = []
        #: The members ``publish_in`` wrote, by the transaction it wrote them in.
        self._written: list[tuple[Transaction, list[str]]] = []
        self._state = "new"
        self._token: Token[Batch | None] | None = None

    @property
    def members(self) -> list[str]:
        """The task ids published in the block so far (all of them once it exited)."""
        return [task_id for task_id, _ in self._members]

    def __repr__(self) -> str:
        return f"<Batch {self.id} {self._state}, {len(self._members)} members>"

    def __enter__(self) -> Batch:
        if self._state != "new":
            raise BatchError(
                f"batch {self.id} is {self._state}: a batch takes members only inside its "
                "one block; open a new Batch for more tasks"
            )
        outer = _current.get()
        if outer is not None:
            raise BatchError(
                f"a Batch inside the block of batch {outer.id}: batches do not nest; "
                "publish the inner tasks in a batch of their own, after this block (or "
                "from a task)"
            )
        app = self.app
        if app.conf.task_always_eager:
            raise BatchError(
                "Batch with task_always_eager: nothing is published, so no member would "
                "be counted; run a real worker (or celery_reliable.testing's drain())"
            )
        from celery_reliable.batches.ending import serialized
        from celery_reliable.store import require_store
        from celery_reliable.store.timeutil import utcnow

        for name, sig in (("on_complete", self.on_complete), ("on_success", self.on_success)):
            _check_callback(app, name, sig)
        store = require_store(app, "Batch")
        store.batches.open(
            self.id,
            self.description,
            serialized(self.on_complete),
            serialized(self.on_success),
            utcnow(),
        )
        _install(app)
        self._state = "open"
        self._token = _current.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._token is not None
        _current.reset(self._token)
        self._token = None
        from celery_reliable.batches.ending import seal

        abandon = exc_type is not None
        self._state = "abandoned" if abandon else "sealed"
        try:
            seal(self.app, self.id, list(self._members), self._written, abandon=abandon)
        except Exception:
            if not abandon:
                raise
            # The block's own exception is the one that matters: an abandoned batch
            # fires no callback, whether or not its row says so.
            logger.exception(
                "batch %s: its block raised, and the batch could not be marked "
                "abandoned (it stays open; no callback fires either way)",
                self.id,
            )

    def _written_in(self, transaction: Transaction, task_ids: list[str]) -> None:
        """``publish_in`` wrote these members in the caller's ``transaction``: they are
        members if, and once, it commits."""
        self._written.append((transaction, task_ids))

    def _unpublished(self, task_ids: list[str]) -> None:
        """``publish_in`` captured these members, then raised before writing them:
        they were never sent, so they are not members."""
        for task_id in task_ids:
            for index in range(len(self._members) - 1, -1, -1):
                if self._members[index][0] == task_id:
                    del self._members[index]
                    break

    def _stamped_option(self, extra: dict[str, Any]) -> dict[str, Any]:
        """The ``headers`` option of a member's publish, with the batch's id in its
        nested ``headers`` too when it has one."""
        nested = extra.get("headers")
        if not isinstance(nested, dict):
            return extra
        return {**extra, "headers": {**nested, BATCH_HEADER: self.id}}

    def _stamp(self, name: str, headers: dict[str, Any]) -> str | None:
        """The member's task id once its headers carry the batch; None: not a member."""
        if name.startswith("celery."):
            return None  # Celery's own (a chord's chord_unlock, ...)
        task = self.app.tasks.get(name)
        if task is not None and not isinstance(task, ReliableTask):
            raise BatchError(
                f"task {name} published inside batch {self.id} is not a ReliableTask: "
                "its outcome cannot be known, so it cannot be a member; give it "
                "base=ReliableTask, or publish it outside the block"
            )
        task_id = headers.get("id")
        if not isinstance(task_id, str):
            raise BatchError(
                f"batch {self.id}: the message of {name} has no task id in its headers "
                "(task_protocol 1): use Celery's default task_protocol = 2"
            )
        headers[BATCH_HEADER] = self.id
        nested = headers.get("headers")
        if isinstance(nested, dict):
            # Tracing tools nest the custom headers in a "headers" header, which the
            # worker then reads as request.headers (celery#4875): the id goes there too.
            headers["headers"] = {**nested, BATCH_HEADER: self.id}
        return task_id


def _app_of(*signatures: Signature | None) -> Celery:
    for sig in signatures:
        bound = getattr(sig, "_app", None) if sig is not None else None
        if bound is not None:
            return bound  # type: ignore[no-any-return]
    return current_app._get_current_object()  # type: ignore[attr-defined,no-any-return]


def _check_callback(app: Celery, name: str, sig: Signature | None) -> None:
    if sig is None:
        return
    task = app.tasks.get(sig.task) if isinstance(sig.task, str) else None
    if task is not None and getattr(task, "_reliable_unique", None) is not None:
        raise BatchError(
            f"Batch({name}={sig.task}...): the task has unique=, which a callback cannot "
            "have (it is published through the outbox); drop unique= (the callback fires "
            "once per batch anyway)"
        )


def _install(app: Celery) -> None:
    """Once per app, in a process that opens a batch: its ``send_task_message`` wrapped
    to stamp and count the members of the batch open in the caller's context
    (``delivery/send_hook.py``)."""

    def wrap(send: SendTaskMessage) -> SendTaskMessage:
        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            batch = _current.get()
            if batch is None or batch.app is not app:
                return send(producer, name, message, **options)
            task_id = batch._stamp(name, message.headers)
            extra = options.get("headers")
            if task_id is not None and isinstance(extra, dict):
                # Celery merges the publish's headers option into the message's after
                # this, and tracing tools (sentry-sdk) put their nested "headers" there:
                # it would replace the nested one stamped above (celery#4875).
                options["headers"] = batch._stamped_option(extra)
            sent = send(producer, name, message, **options)
            if task_id is not None:
                batch._members.append((task_id, name))
            return sent

        return send_task_message

    wrap_send_task_message(app, _INSTALLED, wrap)
