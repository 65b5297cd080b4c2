"""One structured log line per execution end.

Logger ``celery_reliable.outcome``. The message is logfmt-style for humans and grep;
the same fields ride on the record (``extra=``) for JSON handlers: ``task_name``,
``task_id``, ``attempt``, ``outcome``, ``duration``, ``reason``, ``retry_in``,
``queue``. ``task_name``/``task_id`` are the names Celery's own task log format uses.
"""

from __future__ import annotations

import logging

from celery_reliable.observers.base import Observer
from celery_reliable.outcomes import Outcome
from celery_reliable.signals import OutcomeEvent

logger = logging.getLogger("celery_reliable.outcome")

_LEVELS = {
    Outcome.SUCCEEDED: logging.INFO,
    Outcome.DUPLICATE: logging.INFO,
    Outcome.RETRIED: logging.INFO,
    Outcome.SNOOZED: logging.INFO,
    Outcome.CANCELLED: logging.INFO,
    Outcome.DISCARDED: logging.WARNING,
    Outcome.EXHAUSTED: logging.ERROR,
    Outcome.FAILED: logging.ERROR,
}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LoggingObserver(Observer):
    name = "logging"

    def on_outcome(self, event: OutcomeEvent) -> None:
        outcome = event.outcome
        level = _LEVELS[outcome]
        if not logger.isEnabledFor(level):
            return
        duration, retry_in, reason = event.duration, event.retry_in, event.reason or ""
        name = event.task.name
        parts = [
            f"task={name}",
            f"id={event.task_id}",
            f"attempt={event.attempt}",
            f"outcome={outcome.value}",
            f"duration={duration:.3f}s" if duration is not None else "duration=unknown",
        ]
        if retry_in is not None:
            parts.append(f"retry_in={retry_in:.3f}s")
        if reason:
            parts.append(f"reason={_quote(reason)}")
        logger.log(
            level,
            " ".join(parts),
            extra={
                "task_name": name,
                "task_id": event.task_id,
                "attempt": event.attempt,
                "outcome": outcome.value,
                "duration": duration,
                "reason": reason,
                "retry_in": retry_in,
                "queue": event.queue,
            },
        )
