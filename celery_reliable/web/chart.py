"""The overview's bar charts, computed here and drawn as inline SVG by the template:
executions per minute, stacked by how they ended. No script, nothing to download."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

#: Outcomes drawn together, bottom to top, with the CSS class of each group.
GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    ("ok", frozenset({"succeeded", "duplicate"})),
    ("again", frozenset({"retried", "snoozed", "limited"})),
    ("cancelled", frozenset({"cancelled"})),
    ("error", frozenset({"discarded", "exhausted", "failed"})),
)
_GROUP_OF = {outcome: name for name, outcomes in GROUPS for outcome in outcomes}

#: Outcomes that ended a job because something went wrong (they write dead letters).
ERRORS = frozenset({"discarded", "exhausted", "failed"})
#: Outcomes that did not end the job: it runs again.
NOT_ENDED = frozenset({"retried", "snoozed", "limited"})


@dataclass(frozen=True)
class Segment:
    group: str
    y: float
    height: float
    count: int


@dataclass(frozen=True)
class Bar:
    minute: datetime
    x: float
    total: int
    segments: tuple[Segment, ...]

    @property
    def title(self) -> str:
        parts = ", ".join(f"{s.count} {s.group}" for s in self.segments)
        return f"{self.minute:%H:%M} UTC: {parts or 'nothing'}"


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    bars: tuple[Bar, ...]
    bar_width: float
    peak: int


def per_minute(
    rows: Iterable[tuple[datetime, str, str, str, int]],
) -> dict[str, dict[datetime, dict[str, int]]]:
    """``task -> minute -> group -> executions`` from the history's minute rows."""
    found: dict[str, dict[datetime, dict[str, int]]] = {}
    for minute, task_name, _queue, outcome, count in rows:
        groups = found.setdefault(task_name, {}).setdefault(minute, {})
        group = _GROUP_OF.get(outcome, "error")
        groups[group] = groups.get(group, 0) + count
    return found


def all_tasks(
    by_task: Mapping[str, Mapping[datetime, Mapping[str, int]]],
) -> dict[datetime, dict[str, int]]:
    summed: dict[datetime, dict[str, int]] = {}
    for minutes in by_task.values():
        for minute, groups in minutes.items():
            into = summed.setdefault(minute, {})
            for group, count in groups.items():
                into[group] = into.get(group, 0) + count
    return summed


def chart(
    minutes: Mapping[datetime, Mapping[str, int]],
    last_minute: datetime,
    *,
    span: int = 60,
    width: int = 240,
    height: int = 36,
) -> Chart:
    """``span`` bars ending at ``last_minute``, scaled to the busiest minute."""
    first = last_minute - timedelta(minutes=span - 1)
    peak = max((sum(groups.values()) for groups in minutes.values()), default=0)
    step = width / span
    bars = []
    for index in range(span):
        minute = first + timedelta(minutes=index)
        groups = minutes.get(minute, {})
        total = sum(groups.values())
        segments = []
        top = float(height)
        for group, _ in GROUPS:
            count = groups.get(group, 0)
            if not count:
                continue
            # At least one pixel, so a single error in a busy minute stays visible.
            size = max(1.0, height * count / peak)
            top -= size
            segments.append(Segment(group, round(top, 2), round(size, 2), count))
        bars.append(Bar(minute, round(index * step, 2), total, tuple(segments)))
    return Chart(width, height, tuple(bars), round(max(step - 1, 1), 2), peak)


def error_rate(counts: Mapping[str, int]) -> float | None:
    """Of the executions that ended their job, the share that ended in error
    (discarded, exhausted, failed); None when no job ended."""
    ended = sum(count for outcome, count in counts.items() if outcome not in NOT_ENDED)
    if not ended:
        return None
    return sum(counts.get(outcome, 0) for outcome in ERRORS) / ended
