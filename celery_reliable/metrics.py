"""StatsD metric names: the wire contract dashboards and alerts are built on.

Pure module (no StatsD client): the observer, the dashboards' test and the docs all
take names from here.

Dotted names (the default):
    ``{prefix}.{task}.started``, ``{prefix}.{task}.{outcome}``, ``{prefix}.{task}.limited``
    (counters),
    ``{prefix}.{task}.duration``, ``{prefix}.{task}.queue_time`` (timers, ms),
    ``{prefix}.queue.{queue}.depth`` (gauge),
    ``{prefix}.outbox.depth``, ``{prefix}.outbox.oldest_age`` (gauges: messages waiting
    in the outbox, and the seconds the oldest has waited).
    ``{task}`` is the task name with every ``.`` replaced by ``_``; so is ``{queue}``.

Tagged names (``reliable_statsd_tags = "dogstatsd"``):
    ``{prefix}.task.{event}`` with tags ``task:``, ``queue:`` and, on outcome counters
    and the duration timer, ``outcome:``; ``{prefix}.queue.depth`` with tag ``queue:``;
    the outbox's two gauges by the same names as dotted, without tags (there is one
    outbox per store).
"""

from __future__ import annotations

from celery_reliable.outcomes import Outcome

STARTED = "started"
#: The counter of a SNOOZED execution that waited for a limit's slot (``limits=[...]``),
#: counted instead of ``snoozed``.
LIMITED = "limited"
DURATION = "duration"
QUEUE_TIME = "queue_time"

COUNTER_EVENTS = (STARTED, *(outcome.value for outcome in Outcome), LIMITED)
TIMER_EVENTS = (DURATION, QUEUE_TIME)
TASK_EVENTS = COUNTER_EVENTS + TIMER_EVENTS


def flatten(name: str) -> str:
    """``shop.tasks.send`` -> ``shop_tasks_send``: one metric path segment."""
    return name.replace(".", "_")


def task_metric(prefix: str, task_name: str, event: str) -> str:
    return f"{prefix}.{flatten(task_name)}.{event}"


def queue_depth_metric(prefix: str, queue: str) -> str:
    return f"{prefix}.queue.{flatten(queue)}.depth"


#: The outbox's gauges: messages waiting, and the age of the oldest (seconds; 0 when
#: none waits).
OUTBOX_DEPTH = "depth"
OUTBOX_OLDEST_AGE = "oldest_age"
OUTBOX_GAUGES = (OUTBOX_DEPTH, OUTBOX_OLDEST_AGE)


def outbox_metric(prefix: str, gauge: str) -> str:
    return f"{prefix}.outbox.{gauge}"


def tagged_task_metric(prefix: str, event: str) -> str:
    return f"{prefix}.task.{event}"


def tagged_queue_depth_metric(prefix: str) -> str:
    return f"{prefix}.queue.depth"


def dogstatsd_tags(**tags: str | None) -> str:
    """``|#task:x,queue:y``; values are cleaned of the characters the format uses."""
    parts = []
    for key, value in tags.items():
        if value is None:
            continue
        clean = str(value).replace(",", "_").replace("|", "_").replace("#", "_")
        parts.append(f"{key}:{clean}")
    return "|#" + ",".join(parts) if parts else ""
