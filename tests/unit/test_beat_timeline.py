"""Periodic entries' due times (``celery_reliable.beat.timeline``) are a function of the
schedule alone: whatever moment a beat starts from, it names the same slots as every
other beat, which is what lets one row per (entry, due time) be the claim.

Hypothesis draws crontabs, time zones and moments; the slots found by walking from one
moment are the slots found by walking from a later one (they converge), match a brute
force over every minute, and, in UTC, Celery's own ``remaining_estimate``.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from celery import Celery
from celery.schedules import crontab, schedule, solar
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_reliable.beat.timeline import (
    CronTimeline,
    GenericTimeline,
    IntervalTimeline,
    first_at_or_after,
    iso,
    slots_between,
    task_id_for,
    timeline_for,
)

# Hypothesis's examples take 12-15 s in all on a loaded machine: priced as such, the
# file runs before the quick ones, not last on one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.cost(2.0)

UTC = timezone.utc
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]

moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1), timezones=st.just(UTC)
)


def app_in(zone: str) -> Celery:
    app = Celery(f"timeline-{zone}", set_as_current=False)
    app.conf.timezone = zone
    return app


APPS = {zone: app_in(zone) for zone in ZONES}


def cron(zone: str, **fields: Any) -> crontab:
    made = crontab(**fields)
    made.app = APPS[zone]
    return made


@st.composite
def crontabs(draw: st.DrawFn) -> dict[str, str]:
    def field(low: int, high: int) -> str:
        kind = draw(st.sampled_from(["*", "one", "list", "step"]))
        if kind == "*":
            return "*"
        if kind == "one":
            return str(draw(st.integers(low, high)))
        if kind == "step":
            return f"*/{draw(st.integers(2, max(2, (high - low) // 2)))}"
        values = draw(st.sets(st.integers(low, high), min_size=1, max_size=4))
        return ",".join(str(v) for v in sorted(values))

    return {
        "minute": field(0, 59),
        "hour": field(0, 23),
        "day_of_week": field(0, 6),
        # Days every month has: a crontab that never fires is Celery's error, not ours.
        "day_of_month": field(1, 28),
        "month_of_year": field(1, 12),
    }


def walk(timeline: Any, start: datetime, count: int) -> list[datetime]:
    found: list[datetime] = []
    current = start
    for _ in range(count):
        nxt = timeline.after(current)
        assert nxt is not None
        found.append(nxt)
        current = nxt
    return found


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=crontabs(),
    zone=st.sampled_from(ZONES),
    start=moments,
    gap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=40)),
)
def test_crontab_slots_are_the_same_from_any_starting_moment(
    spec: dict[str, str], zone: str, start: datetime, gap: timedelta
) -> None:
    """A beat that started later (or read a later slot from the store) names the same
    slots as one that has been walking since ``start``."""
    timeline = timeline_for(cron(zone, **spec))
    later = start + gap
    from_later = walk(timeline, later, 5)
    early = timeline.after(start)
    assert early is not None
    walked = [early]
    while walked[-1] < from_later[-1]:
        nxt = timeline.after(walked[-1])
        assert nxt is not None
        walked.append(nxt)
    assert [slot for slot in walked if slot > later] == from_later
    for slot in from_later:
        # Whole minutes, strictly increasing, and each one's neighbours agree.
        assert slot.second == 0 and slot.microsecond == 0
        assert timeline.before(slot + timedelta(microseconds=1)) == slot
        assert first_at_or_after(timeline, slot) == slot


@settings(max_examples=150, deadline=None)
@given(spec=crontabs(), zone=st.sampled_from(ZONES), start=moments)
def test_crontab_slots_match_every_minute_that_matches(
    spec: dict[str, str], zone: str, start: datetime
) -> None:
    """Brute force: the wall-clock minutes from ``start`` on whose fields match, each
    at its first occurrence, nonexistent ones left out, agree with the search."""
    entry = cron(zone, **spec)
    timeline = timeline_for(entry)
    assert isinstance(timeline, CronTimeline)
    tz = ZoneInfo(zone)
    seen: set[datetime] = set()
    expected: list[datetime] = []
    instant = start.replace(second=0, microsecond=0)
    for _ in range(3 * 24 * 60):  # three days, minute by minute in real time
        instant += timedelta(minutes=1)
        wall = instant.astimezone(tz)
        first = (
            wall.replace(tzinfo=None).replace(tzinfo=tz, fold=0).astimezone(UTC)
        )  # its first occurrence
        if (
            wall.minute in timeline.minutes
            and wall.hour in timeline.hours
            and wall.day in timeline.days_of_month
            and wall.month in timeline.months
            and (wall.weekday() + 1) % 7 in timeline.days_of_week
            and start < first < start.replace(second=0, microsecond=0) + timedelta(days=3)
            and first not in seen
        ):
            seen.add(first)
            expected.append(first)
    end = start.replace(second=0, microsecond=0) + timedelta(days=3)
    found, _ = slots_between(timeline, start, end, limit=10_000)
    assert found == sorted(expected)


@settings(max_examples=150, deadline=None)
@given(spec=crontabs(), start=moments)
def test_crontab_slots_in_utc_are_celerys_own(spec: dict[str, str], start: datetime) -> None:
    """Where no clock changes (UTC), the next slot is Celery's own next run time."""
    entry = cron("UTC", **spec)
    found = timeline_for(entry).after(start)
    assert found is not None
    entry.nowfun = lambda: start
    celery_next = start + entry.remaining_estimate(start)
    assert found == celery_next.replace(second=0, microsecond=0)


def test_crontab_across_dst_changes() -> None:
    """The hour skipped in spring has no slot; the hour repeated in autumn has its
    slots once, at their first occurrence."""
    every_half_hour = timeline_for(cron("Europe/Paris", minute="0,30", hour="1-3"))
    spring = walk(every_half_hour, datetime(2026, 3, 28, 12, tzinfo=UTC), 6)
    assert [s.astimezone(ZoneInfo("Europe/Paris")).strftime("%d %H:%M") for s in spring] == [
        "29 01:00",
        "29 01:30",
        "29 03:00",
        "29 03:30",
        "30 01:00",
        "30 01:30",
    ]
    autumn = walk(every_half_hour, datetime(2026, 10, 24, 12, tzinfo=UTC), 6)
    assert [iso(s) for s in autumn] == [
        "2026-10-24T23:00:00.000000Z",  # 01:00 CEST
        "2026-10-24T23:30:00.000000Z",
        "2026-10-25T00:00:00.000000Z",  # 02:00 CEST, the first of two
        "2026-10-25T00:30:00.000000Z",
        "2026-10-25T02:00:00.000000Z",  # 03:00 CET: 02:00 and 02:30 CET are not again
        "2026-10-25T02:30:00.000000Z",
    ]


@given(
    seconds=st.sampled_from([1, 2.5, 10, 60, 90, 3600, 86400]),
    start=moments,
    gap=st.timedeltas(min_value=timedelta(0), max_value=timedelta(hours=3)),
)
def test_interval_slots_are_aligned_to_the_epoch(
    seconds: float, start: datetime, gap: timedelta
) -> None:
    timeline = timeline_for(schedule(timedelta(seconds=seconds)))
    assert isinstance(timeline, IntervalTimeline)
    every = timedelta(seconds=seconds)
    nxt = timeline.after(start)
    assert timedelta(0) < nxt - start <= every
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert (nxt - epoch) % every == timedelta(0)
    assert timeline.before(nxt) == nxt - every
    assert timeline.after(nxt - timedelta(microseconds=1)) == nxt
    later = start + gap
    assert timeline.after(later) in [nxt + k * every for k in range(20_000)]
    first, last = nxt, timeline.before(later + every)
    if last >= first:
        assert timeline.count(first, last) == len(
            slots_between(timeline, start, last + every / 2, 10**6)[0]
        )


def test_a_relative_interval_is_aligned_all_the_same() -> None:
    plain = timeline_for(schedule(timedelta(minutes=5)))
    relative = timeline_for(schedule(timedelta(minutes=5), relative=True))
    moment = datetime(2026, 12, 7, 13, 2, 7, tzinfo=UTC)
    assert plain.after(moment) == relative.after(moment) == moment.replace(minute=5, second=0)


def test_solar_slots_are_whole_minutes_and_converge() -> None:
    sunrise = solar("sunrise", 48.85, 2.35)
    sunrise.app = APPS["UTC"]
    timeline = timeline_for(sunrise)
    assert isinstance(timeline, GenericTimeline)
    start = datetime(2026, 6, 1, tzinfo=UTC)
    days = walk(timeline, start, 4)
    assert all(s.second == 0 and s.microsecond == 0 for s in days)
    assert all(
        timedelta(hours=23) < b - a < timedelta(hours=25) for a, b in itertools.pairwise(days)
    )
    # From any moment of the night before, the same sunrise.
    for hours in (1, 2, 3):
        assert timeline.after(days[1] - timedelta(hours=hours)) == days[1]
    assert timeline.after(days[1]) == days[2]


def test_the_task_id_is_a_function_of_entry_task_and_due_time() -> None:
    due = datetime(2026, 12, 7, 13, 0, tzinfo=UTC)
    same = datetime(2026, 12, 7, 14, 0, tzinfo=timezone(timedelta(hours=1)))
    assert task_id_for("e", "t", due) == task_id_for("e", "t", same)
    assert (
        len(
            {
                task_id_for("e", "t", due),
                task_id_for("f", "t", due),
                task_id_for("e", "u", due),
                task_id_for("e", "t", due + timedelta(seconds=1)),
            }
        )
        == 4
    )
