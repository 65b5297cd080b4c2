"""Writes a dead letter for every DISCARDED, EXHAUSTED and FAILED execution.

It runs when the outcome is sent, before the worker acknowledges the message (with
``acks_late``). When the store cannot be reached the dead letter is not lost: it is
logged at ERROR on ``celery_reliable.dead_letters`` as one JSON line holding the whole
row (arguments included unless redacted), from which it can be re-published.
"""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

from celery_reliable.config import settings_for
from celery_reliable.errors import StoreUnavailable
from celery_reliable.headers import Counters
from celery_reliable.observers.base import Observer
from celery_reliable.signals import OutcomeEvent
from celery_reliable.store import Store
from celery_reliable.store.dead_letters import DeadLetters, queue_of, republish_options
from celery_reliable.store.logged_dead_letters import LOGGED_MARKER

logger = logging.getLogger("celery_reliable.dead_letters")


def _traceback(exc: BaseException | None) -> str | None:
    if exc is None or exc.__traceback__ is None:
        return None
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


class DeadLetterObserver(Observer):
    name = "dead letters"

    def __init__(self, app: Any, store: Store) -> None:
        super().__init__(app)
        self.store = store
        self.settings = settings_for(app)

    def _outcome(self, sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        # Most executions write no dead letter: decided before the generic wrapper.
        if event is not None and event.outcome.dead_letters:
            super()._outcome(sender, event)

    def on_outcome(self, event: OutcomeEvent) -> None:
        task, request, exc = event.task, event.request, event.exc
        options = republish_options(request)
        # The reasons of the retries before this end, as the message carried them: the
        # web view and `dead show --json` show the way to the dead letter.
        history = Counters.from_headers(getattr(request, "headers", None), None, quiet=True)
        if history.history:
            options["retry_history"] = history.history
        row = {
            "task_id": event.task_id or "",
            "task_name": task.name,
            "queue": queue_of(options),
            "args": getattr(request, "args", None),
            "kwargs": getattr(request, "kwargs", None),
            "options": options,
            "redact": bool(task.dead_letter_redact or self.settings.redacts(task.name)),
            "outcome": event.outcome.value,
            "exc_type": f"{type(exc).__module__}.{type(exc).__qualname__}" if exc else None,
            "exc_message": str(exc) if exc is not None else None,
            "traceback": _traceback(exc),
            "reason": event.reason or "",
            "attempts": event.attempt or 0,
        }
        try:
            self.store.dead_letters.write(**row)
        except StoreUnavailable as error:
            logger.error(
                "dead letter for %s[%s] not stored (%s); `celery reliable dead import` "
                "reads it back from this line: %s%s",
                task.name,
                row["task_id"],
                error,
                LOGGED_MARKER,
                json.dumps(DeadLetters.build_row(**row), default=str),
            )
