"""When a periodic entry is due: its slots, computed from the schedule alone.

Every beat process must name the same slots, whenever it started and whatever it
published before: a slot is claimed by its (entry, due time), so two beats that
disagreed on a due time by a millisecond would both publish. So a slot is never
"now" or "the last run plus the interval" (Celery's own scheduler): it is a function of
the schedule, and :meth:`Timeline.after` of any moment gives the same next slot on
every process.

* ``schedule(run_every)`` (an int, float or timedelta in ``beat_schedule``): the
  multiples of the interval since the Unix epoch, in UTC, to the microsecond: every
  10 s at :00, :10, ...; every hour on the hour; every day at 00:00 UTC (a time of day
  is crontab's job). ``relative`` changes nothing: the slots are aligned already.
* ``crontab``: its own fields (``minute``, ``hour``, ``day_of_week``,
  ``day_of_month``, ``month_of_year``, all of which must match, as in Celery) in the
  schedule's time zone (the app's ``timezone``). A wall-clock time that does not exist
  (the hour skipped when clocks go forward) has no slot; one that happens twice (clocks
  go back) has one, at its first occurrence.
* ``solar``: the event's time as ephem computes it, cut to the minute (ephem's answer
  moves by fractions of a second with the moment it searches from).
* any other schedule: its ``remaining_estimate``, asked with "now" pinned to the moment
  searched from, cut to the second.

Times here are aware UTC datetimes.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo
from typing import Any, Protocol, cast

from celery.schedules import crontab, schedule, solar

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: How far a crontab search looks (a 29 February that must be a Monday: 28 years).
_CRON_SEARCH_DAYS = 400 * 366
#: Tries of a generic schedule before it counts as never due again.
_GENERIC_TRIES = 1000

#: The namespace of the task ids derived from (entry, due time).
TASK_ID_NAMESPACE = uuid.UUID("6f1c2d1e-8a43-5c55-9d1b-3a3c7e0b5ea1")


def task_id_for(entry: str, task_name: str, due: datetime) -> str:
    """The task id of the slot: the same on every beat, so that a slot published twice
    (a beat that took over the claim of one that died after publishing) is one job to
    the worker's receipt."""
    return str(uuid.uuid5(TASK_ID_NAMESPACE, f"{entry}\x00{task_name}\x00{iso(due)}"))


def iso(moment: datetime) -> str:
    """``2026-12-07T13:00:00.000000Z``: one spelling per instant."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Timeline(Protocol):
    def after(self, moment: datetime) -> datetime | None:
        """The first slot strictly after ``moment``; None: never again."""

    def before(self, moment: datetime) -> datetime | None:
        """The last slot strictly before ``moment``; None: none, or not known cheaply
        (the caller then walks :meth:`after`)."""

    def describe(self) -> str:
        """The schedule, for people."""


def timeline_for(entry_schedule: Any) -> Timeline:
    """The timeline of a ``ScheduleEntry.schedule``."""
    if isinstance(entry_schedule, crontab):
        return CronTimeline.of(entry_schedule)
    if type(entry_schedule) is schedule:
        return IntervalTimeline(cast(Any, entry_schedule).run_every)
    if isinstance(entry_schedule, solar):
        return GenericTimeline(entry_schedule, resolution=timedelta(minutes=1))
    return GenericTimeline(entry_schedule, resolution=timedelta(seconds=1))


# -- intervals ----------------------------------------------------------------------------


class IntervalTimeline:
    def __init__(self, every: timedelta) -> None:
        if every <= timedelta(0):
            raise ValueError(f"a periodic interval must be positive, got {every}")
        self.every = every
        self._every_us = _microseconds(every)

    def after(self, moment: datetime) -> datetime:
        step = _microseconds(moment - EPOCH) // self._every_us + 1
        return EPOCH + timedelta(microseconds=step * self._every_us)

    def before(self, moment: datetime) -> datetime:
        # The last multiple strictly below: ceil, then one step back.
        step = -(-_microseconds(moment - EPOCH) // self._every_us) - 1
        return EPOCH + timedelta(microseconds=step * self._every_us)

    def count(self, first: datetime, last: datetime) -> int:
        """How many slots from ``first`` to ``last``, both slots, inclusive."""
        return (_microseconds(last - first) // self._every_us) + 1

    def describe(self) -> str:
        return f"every {_seconds_text(self.every)} (aligned to the epoch, UTC)"


def _microseconds(delta: timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _seconds_text(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}" if count != 1 else unit
    return f"{seconds:g} s"


# -- crontab ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CronTimeline:
    """A crontab's slots, searched day by day in its time zone."""

    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    #: Sunday is 0, as in cron and Celery.
    days_of_week: frozenset[int]
    days_of_month: frozenset[int]
    months: frozenset[int]
    tz: tzinfo
    text: str

    @classmethod
    def of(cls, given: crontab) -> CronTimeline:
        cron: Any = given  # its expanded fields are sets of ints (the stubs lack them)
        fields = " ".join(
            str(getattr(cron, f"_orig_{name}", "*"))
            for name in ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
        )
        return cls(
            minutes=tuple(sorted(cron.minute)),
            hours=tuple(sorted(cron.hour)),
            days_of_week=frozenset(cron.day_of_week),
            days_of_month=frozenset(cron.day_of_month),
            months=frozenset(cron.month_of_year),
            tz=_tz(cron),
            text=fields,
        )

    def after(self, moment: datetime) -> datetime | None:
        lower = _wall(moment, self.tz) - self._margin()
        for day in self._days(lower.date(), 1):
            for hour in self.hours:
                if datetime(day.year, day.month, day.day, hour, 59) < lower:
                    continue
                for minute in self.minutes:
                    if datetime(day.year, day.month, day.day, hour, minute) < lower:
                        continue
                    found = self._instant(day, hour, minute)
                    if found is not None and found > moment:
                        return found
        return None

    def before(self, moment: datetime) -> datetime | None:
        upper = _wall(moment, self.tz) + self._margin()
        for day in self._days(upper.date(), -1):
            for hour in reversed(self.hours):
                if datetime(day.year, day.month, day.day, hour) > upper:
                    continue
                for minute in reversed(self.minutes):
                    if datetime(day.year, day.month, day.day, hour, minute) > upper:
                        continue
                    found = self._instant(day, hour, minute)
                    if found is not None and found < moment:
                        return found
        return None

    def describe(self) -> str:
        return f"crontab {self.text} ({self.tz})"

    def _margin(self) -> timedelta:
        """How far an instant's wall clock may be from a slot's that comes after it
        (before it, searching back): none in UTC; around a DST change, the change."""
        return _NO_MARGIN if _fixed_utc(self.tz) else _DST_MARGIN

    def _days(self, start: date, step: int) -> Iterator[date]:
        day = start
        for _ in range(_CRON_SEARCH_DAYS):
            if (
                day.month in self.months
                and day.day in self.days_of_month
                and (day.weekday() + 1) % 7 in self.days_of_week
            ):
                yield day
            day += timedelta(days=step)

    def _instant(self, day: date, hour: int, minute: int) -> datetime | None:
        """The instant of a wall-clock time (its first occurrence), or None when the
        clocks skip it."""
        wall = datetime(day.year, day.month, day.day, hour, minute, tzinfo=self.tz)
        instant = wall.astimezone(UTC)
        back = instant.astimezone(self.tz)
        if (back.hour, back.minute) != (hour, minute) or back.date() != day:
            return None  # in the hour skipped when the clocks went forward
        return instant


_NO_MARGIN = timedelta(0)
#: More than any time zone's DST change (two hours at most, historically).
_DST_MARGIN = timedelta(hours=3)


def _wall(moment: datetime, tz: tzinfo) -> datetime:
    """The naive wall-clock time of ``moment`` in ``tz``."""
    return moment.astimezone(tz).replace(tzinfo=None)


def _fixed_utc(tz: tzinfo) -> bool:
    return all(tz.utcoffset(datetime(2001, month, 1)) == timedelta(0) for month in (1, 4, 7, 10))


def _tz(cron: Any) -> tzinfo:
    tz = cron.tz
    return tz if isinstance(tz, tzinfo) else UTC


# -- solar and the rest -------------------------------------------------------------------


class GenericTimeline:
    """Any schedule with ``remaining_estimate(last_run_at)``: asked from ``moment``
    with its clock stopped at ``moment``, so the answer is a function of ``moment``."""

    def __init__(self, entry_schedule: Any, resolution: timedelta) -> None:
        self.schedule = entry_schedule
        self.resolution = resolution

    def after(self, moment: datetime) -> datetime | None:
        start = moment
        for _ in range(_GENERIC_TRIES):
            remaining = _pinned(self.schedule, start).remaining_estimate(start)
            found = _floor(start + max(remaining, timedelta(0)), self.resolution)
            if found > moment:
                return found
            # The event cut to the resolution is not after the moment: look from just
            # after that event's own time.
            start = max(start, found) + self.resolution
        return None

    def before(self, moment: datetime) -> datetime | None:
        return None

    def describe(self) -> str:
        return str(self.schedule)


def _floor(moment: datetime, resolution: timedelta) -> datetime:
    micros = _microseconds(moment.astimezone(UTC) - EPOCH)
    step = _microseconds(resolution)
    return EPOCH + timedelta(microseconds=micros - micros % step)


def _pinned(entry_schedule: Any, now: datetime) -> Any:
    """A copy of the schedule whose clock says ``now`` (the entry's own is untouched)."""
    cls: Any = type(entry_schedule)
    clone = object.__new__(cls)
    clone.__dict__.update(entry_schedule.__dict__)
    clone.nowfun = lambda: now
    return clone


# -- walking slots ------------------------------------------------------------------------


def first_at_or_after(timeline: Timeline, moment: datetime) -> datetime | None:
    return timeline.after(moment - _MICROSECOND)


def slots_between(
    timeline: Timeline, start: datetime, end: datetime, limit: int
) -> tuple[list[datetime], bool]:
    """The slots in ``(start, end)``, oldest first, at most ``limit`` of them: and
    whether there are more."""
    found: list[datetime] = []
    current = timeline.after(start)
    while current is not None and current < end:
        if len(found) == limit:
            return found, True
        found.append(current)
        current = timeline.after(current)
    return found, False
