"""The message headers celery_reliable reads and writes, and the counters they carry.

Pure module (no Celery import): the orchestrator (``execution.py``), the publish-time
stamp (``wiring.py``) and the observers (StatsD, Sentry, dead letters) all read these
names here, so that none of them depends on another.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("celery_reliable.execution")

#: Retries remembered in the header, and the characters kept of each reason: enough for
#: an error report to show the way to it, little enough to keep messages small.
MAX_HISTORY = 10
MAX_NOTE = 200

#: The message header with the publish time (epoch seconds), stamped on every published
#: task by a ``before_task_publish`` receiver; ``queue_time`` is measured from it.
SENT_AT_HEADER = "reliable_sent_at"

#: The message header that carries our counters across re-publishes:
#: ``{"attempts": {rule_id: failed executions}, "snoozes": n, "history": [...]}``.
HEADER = "reliable"

#: Headers of ours, never copied into what a dead letter re-publishes.
OWN_HEADERS = frozenset({HEADER, SENT_AT_HEADER})


@dataclass
class Counters:
    """Per-rule failed-execution counts, the snooze count and the last retries' reasons,
    from the message headers."""

    attempts: dict[str, int] = field(default_factory=dict)
    snoozes: int = 0
    #: ``[attempt, epoch seconds, reason]`` of the last retries, oldest first: what an
    #: error report shows of the retries that led to it.
    history: list[list[Any]] = field(default_factory=list)

    @classmethod
    def from_headers(cls, headers: Mapping[str, Any] | None, task_id: str | None) -> Counters:
        raw = headers.get(HEADER) if headers else None
        if raw is None:
            return cls()
        try:
            attempts = raw.get("attempts") or {}
            snoozes = raw.get("snoozes") or 0
            parsed = {str(key): int(value) for key, value in attempts.items()}
            if any(value < 0 for value in parsed.values()) or int(snoozes) < 0:
                raise ValueError("negative counter")
            history = [[int(n), float(at), str(text)] for n, at, text in raw.get("history") or ()]
            return cls(attempts=parsed, snoozes=int(snoozes), history=history)
        except (AttributeError, TypeError, ValueError):
            # A malformed header must not stop the job: start the counters afresh and
            # say so, rather than crash or guess.
            logger.warning(
                "task %s: ignoring malformed %r header %r; attempt counters start afresh",
                task_id,
                HEADER,
                raw,
            )
            return cls()

    def with_failure(self, rule_id: str) -> Counters:
        attempts = dict(self.attempts)
        attempts[rule_id] = attempts.get(rule_id, 0) + 1
        return Counters(attempts=attempts, snoozes=self.snoozes, history=self.history)

    def with_retry_note(self, attempt: int, reason: str) -> Counters:
        note = [attempt, time.time(), reason[:MAX_NOTE]]
        history = [*self.history, note][-MAX_HISTORY:]
        return Counters(attempts=self.attempts, snoozes=self.snoozes, history=history)

    def with_snooze(self) -> Counters:
        return Counters(
            attempts=dict(self.attempts), snoozes=self.snoozes + 1, history=self.history
        )

    def as_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"attempts": self.attempts, "snoozes": self.snoozes}
        if self.history:
            header["history"] = self.history
        return header
