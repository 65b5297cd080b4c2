"""Dead letters that were logged because the store was down, read back from the log.

When a dead letter cannot be written, the worker logs it whole, as one line ending in
``it is here instead: {json}`` (the row as it would have been stored). These are read
back by ``celery -A proj reliable dead import LOGFILE``: each row found is stored
unless the same dead letter (task id, outcome and time) is already there, so a log
imported twice, or one that holds rows stored since, adds nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_reliable.store.schema import dead_letters

#: What the worker writes before the row's JSON, in every such line.
LOGGED_MARKER = "it is here instead: "

_COLUMNS = frozenset(dead_letters.c.keys()) - {"id"}
_REQUIRED = frozenset({"task_id", "task_name", "outcome", "reason", "attempts", "created_at"})


@dataclass(frozen=True)
class Unreadable:
    """A line with the marker whose row cannot be imported, and why."""

    line: int
    why: str


def rows_in(lines: Iterable[str]) -> Iterator[dict[str, Any] | Unreadable]:
    """The rows of the log's dead-letter lines, in order; other lines are skipped."""
    for number, line in enumerate(lines, start=1):
        start = line.find(LOGGED_MARKER)
        if start < 0:
            continue
        text = line[start + len(LOGGED_MARKER) :]
        try:
            # raw_decode: a formatter may add text after the message.
            row, _ = json.JSONDecoder().raw_decode(text)
        except ValueError as exc:
            yield Unreadable(number, f"not JSON ({exc})")
            continue
        problem = _problem(row)
        if problem is not None:
            yield Unreadable(number, problem)
            continue
        yield {**row, "created_at": _when(row["created_at"])}


def _problem(row: Any) -> str | None:
    if not isinstance(row, dict):
        return "not a JSON object"
    unknown = set(row) - _COLUMNS
    if unknown:
        return f"unknown fields {sorted(unknown)} (a log of a newer celery_reliable?)"
    missing = _REQUIRED - set(row)
    if missing:
        return f"missing fields {sorted(missing)}"
    try:
        _when(row["created_at"])
    except (TypeError, ValueError):
        return f"created_at {row['created_at']!r} is not a time"
    return None


def _when(value: Any) -> datetime:
    """The naive UTC time the row was logged with (``str()`` of a datetime)."""
    when = datetime.fromisoformat(str(value))
    return when.replace(tzinfo=None)
