"""Each periodic entry's last and next run, for the web view and ``celery reliable
report``: the entries of the app's ``beat_schedule``, the slots the store holds of
them (``store/beat.py``), and the next due time from the schedule (``timeline.py``).

Read by processes that never run a beat (the web view, the CLI): nothing here needs
the scheduler to be running, or to be this package's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from celery import Celery
from celery.schedules import maybe_schedule

from celery_reliable.beat.timeline import iso, timeline_for
from celery_reliable.store.beat import PUBLISHED, BeatRun

UTC = timezone.utc
#: The scheduler whose claims the store holds.
OURS = "celery_reliable.beat:Scheduler"


@dataclass(frozen=True)
class EntryStatus:
    name: str
    task: str
    #: The schedule, for people ("every 10 s (aligned to the epoch, UTC)").
    schedule: str
    #: The newest slot published; None: none yet (or no store to ask).
    last: BeatRun | None
    #: The newest slot in another state than published: claimed (being published, or
    #: its beat died), skipped, failed; None when the newest is ``last``.
    newest_other: BeatRun | None
    #: The next due time from now (aware UTC); None: never again, or ``error``.
    next_due: datetime | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry": self.name,
            "task": self.task,
            "schedule": self.schedule,
            "last_run": None if self.last is None else self.last.to_dict(),
            "newest_other": None if self.newest_other is None else self.newest_other.to_dict(),
            "next_due": None if self.next_due is None else iso(self.next_due),
            "error": self.error,
        }


def scheduler_is_ours(app: Celery) -> bool:
    """The app's own setting says so (``celery beat -S`` may say otherwise)."""
    return str(app.conf.beat_scheduler or "").replace(".Scheduler", ":Scheduler") == OURS


def entries_of(app: Celery, task: str | None = None) -> list[tuple[str, str, Any]]:
    """``(name, task, schedule)`` of each ``beat_schedule`` entry (of ``task``), by name."""
    found = []
    for name, spec in sorted((app.conf.beat_schedule or {}).items()):
        if not isinstance(spec, dict) or (task is not None and spec.get("task") != task):
            continue
        schedule: Any
        try:
            schedule = maybe_schedule(spec["schedule"], spec.get("relative", False), app=app)
        except Exception as exc:  # a schedule that cannot be built: said in its row
            schedule = exc
        found.append((str(name), str(spec.get("task")), schedule))
    return found


def entry_statuses(
    app: Celery,
    runs: dict[str, dict[str, BeatRun]] | None,
    *,
    task: str | None = None,
    now: datetime | None = None,
) -> list[EntryStatus]:
    """The entries of ``app`` (of ``task``), each with its last and next run.

    ``runs``: ``{"published": store.beat_runs.latest("published"), "any":
    store.beat_runs.latest()}``, or None when the store could not be read."""
    now = now or datetime.now(UTC)
    published = (runs or {}).get(PUBLISHED, {})
    newest = (runs or {}).get("any", {})
    statuses = []
    for name, task_name, schedule in entries_of(app, task):
        last = published.get(name)
        other = newest.get(name)
        if other is not None and last is not None and other.due_at == last.due_at:
            other = None
        if isinstance(schedule, Exception):
            statuses.append(
                EntryStatus(name, task_name, "?", last, other, None, error=_said(schedule))
            )
            continue
        try:
            timeline = timeline_for(schedule)
            statuses.append(
                EntryStatus(name, task_name, timeline.describe(), last, other, timeline.after(now))
            )
        except Exception as exc:
            statuses.append(
                EntryStatus(name, task_name, str(schedule), last, other, None, error=_said(exc))
            )
    return statuses


def read_runs(store: Any) -> dict[str, dict[str, BeatRun]]:
    """What :func:`entry_statuses` reads from the store (raises ``StoreUnavailable``)."""
    rows = store.beat_runs
    return {PUBLISHED: rows.latest(PUBLISHED), "any": rows.latest()}


def _said(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
