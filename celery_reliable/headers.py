"""The message headers celery_reliable reads and writes, and the counters they carry.

Pure module (no Celery import): the orchestrator (``execution.py``), the publish-time
stamp (``delivery/sent_at.py``) and the observers (StatsD, Sentry, dead letters) all read these
names here, so that none of them depends on another.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
#: ``{"attempts": {rule_id: failed executions}, "snoozes": n, "history": [...]}``, and
#: for a job that waited for a limit's slot, ``"limited": n, "since": ms`` (when it
#: first waited: its place in the line).
HEADER = "reliable"

#: The message header of a job published by retrying a dead letter: that dead letter's
#: id, so that the dead letter the job may end in links back to the one it came from.
RETRY_OF_HEADER = "reliable_retry_of"

#: The message header of a job written to the outbox (``publish_in``): a relay may
#: publish it twice (killed between the publish and the delete), so the worker takes a
#: receipt for its task id, and the second message is a DUPLICATE (``execution.py``).
OUTBOX_HEADER = "reliable_outbox"

#: The message header of a periodic job published by ``celery_reliable.beat``:
#: ``{"entry": name, "due": ISO 8601 UTC}``. Its task id is derived from both, and a
#: beat that took over a slot whose first publisher died may publish it a second time:
#: the worker takes a receipt for the task id, as for the outbox's messages.
BEAT_HEADER = "reliable_beat"

#: The message header of a batch's member (``celery_reliable.Batch``): the batch's id.
#: Stamped when the member is published inside the batch's block, kept by its retries
#: and snoozes (they copy the request's headers); its ending is counted once
#: (``batches/ending.py``). A dead letter's retry is not a member: the batch ended.
BATCH_HEADER = "reliable_batch"

#: Headers of ours, never copied into what a dead letter re-publishes.
OWN_HEADERS = frozenset(
    {HEADER, SENT_AT_HEADER, RETRY_OF_HEADER, OUTBOX_HEADER, BEAT_HEADER, BATCH_HEADER}
)


def from_outbox(headers: object) -> bool:
    """The message came through the outbox (its custom headers, ``request.headers``:
    a dict from a message, but whatever ``apply(headers=...)`` was given eagerly)."""
    return isinstance(headers, dict) and OUTBOX_HEADER in headers


def once_per_task_id(headers: object) -> bool:
    """The message may have been published twice under one task id, which is then the
    job (the outbox's relay, or a beat slot): the worker claims a receipt for it."""
    return isinstance(headers, dict) and (OUTBOX_HEADER in headers or BEAT_HEADER in headers)


@dataclass
class Counters:
    """Per-rule failed-execution counts, the snooze count and the last retries' reasons,
    from the message headers."""

    attempts: dict[str, int] = field(default_factory=dict)
    snoozes: int = 0
    #: ``[attempt, epoch seconds, reason]`` of the last retries, oldest first: what an
    #: error report shows of the retries that led to it.
    history: list[list[Any]] = field(default_factory=list)
    #: Waits for a limit's slot (not snoozes: they never count against max_snoozes).
    limited: int = 0
    #: When the job first waited for a slot (epoch ms), 0 if it never did.
    since: int = 0

    @classmethod
    def from_headers(
        cls, headers: Mapping[str, Any] | None, task_id: str | None, *, quiet: bool = False
    ) -> Counters:
        """The counters in ``headers``. A malformed header gives fresh counters and one
        warning; ``quiet``: no warning (an observer reading the header the execution
        already read, and warned about).
        """
        raw = headers.get(HEADER) if headers else None
        if raw is None:
            return cls()
        try:
            return cls._parse(raw)
        # OverflowError: JSON carries Infinity, and int(inf) raises it.
        except (AttributeError, TypeError, ValueError, OverflowError):
            # A malformed header must not stop the job: start the counters afresh and
            # say so, rather than crash or guess.
            if not quiet:
                logger.warning(
                    "task %s: ignoring malformed %r header %.200r; attempt counters start "
                    "afresh (it is written only by celery_reliable: do not set it when "
                    "publishing)",
                    task_id,
                    HEADER,
                    raw,
                )
            return cls()

    @classmethod
    def _parse(cls, raw: Any) -> Counters:
        attempts = raw.get("attempts") or {}
        snoozes = int(raw.get("snoozes") or 0)
        parsed = {str(key): int(value) for key, value in attempts.items()}
        if any(value < 0 for value in parsed.values()) or snoozes < 0:
            raise ValueError("negative counter")
        history: list[list[Any]] = []
        for n, at, text in raw.get("history") or ():
            when = float(at)
            # A retry's time becomes a datetime in error reports: it must be one.
            if not (math.isfinite(when) and 0 <= when < 1e11):
                raise ValueError(f"retry time {at!r} out of range")
            history.append([int(n), when, str(text)])
        limited = int(raw.get("limited") or 0)
        since = int(raw.get("since") or 0)
        if limited < 0 or since < 0:
            raise ValueError("negative counter")
        return cls(attempts=parsed, snoozes=snoozes, history=history, limited=limited, since=since)

    def with_failure(self, rule_id: str) -> Counters:
        attempts = dict(self.attempts)
        attempts[rule_id] = attempts.get(rule_id, 0) + 1
        return replace(self, attempts=attempts)

    def with_retry_note(self, attempt: int, reason: str) -> Counters:
        note = [attempt, time.time(), reason[:MAX_NOTE]]
        history = [*self.history, note][-MAX_HISTORY:]
        return replace(self, history=history)

    def with_snooze(self) -> Counters:
        return replace(self, attempts=dict(self.attempts), snoozes=self.snoozes + 1)

    def with_limited(self, since_ms: int) -> Counters:
        return replace(self, attempts=dict(self.attempts), limited=self.limited + 1, since=since_ms)

    def as_header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"attempts": self.attempts, "snoozes": self.snoozes}
        if self.history:
            header["history"] = self.history
        if self.limited:
            header["limited"] = self.limited
            header["since"] = self.since
        return header
