"""An outbox message: built by Celery's own machinery, kept instead of sent, and
published later as it was built.

``publish_in`` calls the signature's ``apply_async`` (``Task.apply_async`` ->
``app.send_task`` -> ``app.amqp.send_task_message`` -> kombu's ``Producer.publish``)
inside :func:`capturing_for`: while it runs, in this thread, the app's
``send_task_message`` is handed a :class:`Capture` for its producer. (Passing
``producer=`` to ``apply_async`` would not do: a chain drops it before publishing its
first task.) Everything up to the wire runs as for a direct publish: routing, the
task's options, countdown and ETA, expiry, the ``before_task_publish`` receivers
(tracing headers, ours), serializing and compressing the body. The capture keeps what
kombu would hand the channel, and sends nothing; the relay hands the same parts to a
real producer. Nothing of Celery's message format is written here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kombu import Producer, Queue
from kombu.utils.json import dumps, loads

from celery_reliable.delivery.send_hook import SendTaskMessage, wrap_send_task_message
from celery_reliable.headers import OUTBOX_HEADER
from celery_reliable.store.outbox import OutboxRow


@dataclass(frozen=True)
class OutboxMessage:
    """What a producer hands the broker's channel for one task message."""

    task_id: str
    task_name: str
    exchange: str
    routing_key: str
    body: bytes
    content_type: str
    content_encoding: str
    headers: dict[str, Any]
    #: AMQP properties: delivery mode, priority, correlation id, reply-to, expiration.
    properties: dict[str, Any]
    #: The queues Celery declares before publishing it, by name.
    declare: tuple[str, ...]

    def columns(self, now: datetime) -> dict[str, Any]:
        """The row ``reliable_outbox`` keeps of it."""
        return {
            "task_id": self.task_id,
            "task_name": self.task_name,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "body": self.body,
            "content_type": self.content_type,
            "content_encoding": self.content_encoding,
            "headers": dumps(self.headers),
            "properties": dumps(self.properties),
            "declare": dumps(list(self.declare)) if self.declare else None,
            "created_at": now,
        }

    @classmethod
    def from_row(cls, row: OutboxRow) -> OutboxMessage:
        return cls(
            task_id=row.task_id,
            task_name=row.task_name,
            exchange=row.exchange,
            routing_key=row.routing_key,
            body=row.body,
            content_type=row.content_type,
            content_encoding=row.content_encoding,
            headers=loads(row.headers),
            properties=loads(row.properties),
            declare=tuple(loads(row.declare)) if row.declare else (),
        )

    def publish(self, producer: Producer, queues: Any) -> None:
        """Send it with a real producer, as Celery would have: the queues declared
        first (``queues``: the app's ``app.amqp.queues``), the body as it was
        serialized (a content type given, kombu sends the bytes as they are)."""
        properties = dict(self.properties)
        # Properties kombu's publish() takes as parameters, and sets itself from them:
        # the expiration as captured is kombu's milliseconds, the parameter seconds.
        delivery_mode = properties.pop("delivery_mode", None)
        priority = properties.pop("priority", None)
        expiration = properties.pop("expiration", None)
        producer.publish(
            self.body,
            exchange=self.exchange,
            routing_key=self.routing_key,
            delivery_mode=delivery_mode,
            priority=priority,
            expiration=None if expiration is None else int(expiration) / 1000,
            content_type=self.content_type,
            content_encoding=self.content_encoding,
            headers=dict(self.headers),
            declare=_queues(queues, self.declare),
            retry=False,  # the relay decides what a failure means (the row stays)
            **properties,
        )


def _queues(queues: Any, names: tuple[str, ...]) -> list[Queue]:
    found = []
    for name in names:
        try:
            # As Celery looks a queue up: a missing one is created when
            # task_create_missing_queues is on (as it was when the message was built).
            found.append(queues[name])
        except KeyError:
            continue
    return found


class _NoConnection:
    """What ``app.send_task`` reaches through ``producer.connection``."""

    def _reraise_as_library_errors(self) -> Any:
        return nullcontext()


class Capture(Producer):
    """A producer that keeps what kombu would hand the channel, and sends nothing.

    ``messages`` are the task messages captured; other messages the publish would
    send (the ``task-sent`` event of ``task_send_sent_event``) are dropped: sent now,
    they would say "sent" of a message that may never be.
    """

    def __init__(self) -> None:
        # No channel: nothing binds, nothing connects. No default exchange to declare.
        super().__init__(None, auto_declare=False)  # type: ignore[arg-type]
        self.messages: list[OutboxMessage] = []

    @property
    def connection(self) -> Any:
        return _NoConnection()

    def publish(self, body: Any, *args: Any, **kwargs: Any) -> None:
        # Nothing is sent, so nothing to retry: kombu would look for a connection.
        kwargs["retry"] = False
        super().publish(body, *args, **kwargs)

    def _publish(  # noqa: PLR0917 - kombu's own signature
        self,
        body: bytes,
        priority: int | None,
        content_type: str | None,
        content_encoding: str | None,
        headers: dict[str, Any] | None,
        properties: dict[str, Any],
        routing_key: str,
        mandatory: bool,
        immediate: bool,
        exchange: str,
        declare: list[Any],
        *_: Any,
        **__: Any,
    ) -> None:
        headers = dict(headers or {})
        task_id, task_name = headers.get("id"), headers.get("task")
        if not isinstance(task_id, str) or not isinstance(task_name, str):
            return  # an event, not a task message (protocol 1 is refused below)
        headers[OUTBOX_HEADER] = 1
        nested = headers.get("headers")
        if isinstance(nested, dict):
            # Tracing tools nest the custom headers in a "headers" header, which the
            # worker then reads as request.headers (celery#4875): the mark goes there too.
            headers["headers"] = {**nested, OUTBOX_HEADER: 1}
        kept = dict(properties)
        if priority is not None:
            kept["priority"] = priority
        if isinstance(body, str):
            body = body.encode(content_encoding or "utf-8")
        self.messages.append(
            OutboxMessage(
                task_id=task_id,
                task_name=task_name,
                exchange=exchange or "",
                routing_key=routing_key or "",
                body=bytes(body),
                content_type=content_type or "application/data",
                content_encoding=content_encoding or "binary",
                headers=headers,
                properties=kept,
                declare=tuple(entity.name for entity in declare if isinstance(entity, Queue)),
            )
        )


#: The capture of the ``publish_in`` running in this thread (or task), if any.
_active: ContextVar[Capture | None] = ContextVar("reliable_outbox_capture", default=None)

#: Set on an app's ``AMQP`` once its ``send_task_message`` looks for a capture.
_INSTALLED = "_reliable_outbox_sender"


def capturing() -> bool:
    """A ``publish_in`` is building its messages here (``ReliableTask.apply_async``
    then publishes as usual, into the capture)."""
    return _active.get() is not None


@contextmanager
def capturing_for(app: Any) -> Iterator[Capture]:
    """While the block runs, every task message ``app`` sends from this thread goes to
    the capture yielded, whatever producer it was given."""
    _install(app)
    capture = Capture()
    token = _active.set(capture)
    try:
        yield capture
    finally:
        _active.reset(token)


def _install(app: Any) -> None:
    """Once per app, in a process that uses ``publish_in``: its ``send_task_message``
    wrapped to hand a capture over when one is active (``delivery/send_hook.py``).
    Other apps, and processes that never call publish_in, are untouched; a publish
    with no capture active costs one ContextVar read."""

    def wrap(send: SendTaskMessage) -> SendTaskMessage:
        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            capture = _active.get()
            return send(producer if capture is None else capture, name, message, **options)

        return send_task_message

    wrap_send_task_message(app, _INSTALLED, wrap)
