"""An app's ``send_task_message`` wrapped once per app: the one place where
celery_reliable sees a task message on its way to the producer.

``app.amqp.send_task_message`` is Celery's closure (a cached attribute of
``app.amqp``) through which ``apply_async``, ``send_task``, groups and chords publish.
Two features hook into it, each once per app, in the processes that use them: the
outbox's capture (``outbox/message.py``: the message kept as a row instead of sent)
and a batch's stamp (``batches/batch.py``: the batch's id in the member's headers).
Each wraps whatever is there, so both may be installed, in either order.
"""

from __future__ import annotations

from collections.abc import Callable
from threading import Lock
from typing import Any

#: ``send_task_message(producer, name, message, **options)``.
SendTaskMessage = Callable[..., Any]

_lock = Lock()


def wrap_send_task_message(
    app: Any, marker: str, wrap: Callable[[SendTaskMessage], SendTaskMessage]
) -> None:
    """Replace ``app``'s ``send_task_message`` with ``wrap(the current one)``, once per
    app and ``marker`` (an attribute name kept on ``app.amqp``): later calls, and
    concurrent first ones, find the marker and do nothing."""
    amqp = app.amqp
    if amqp.__dict__.get(marker):
        return
    with _lock:
        if amqp.__dict__.get(marker):
            return
        amqp.send_task_message = wrap(amqp.send_task_message)
        amqp.__dict__[marker] = True
