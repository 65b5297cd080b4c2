"""The overview: per task, the outcomes of the last hour and day (from the outcome
history the workers write), a per-minute chart, the error rate and the dead letters
waiting; the depth of each queue, from the broker; what is paused, with a Pause or
Resume button per queue and task (``web/pauses.py``); each periodic entry of the app's
``beat_schedule`` with its last and next run (``beat/status.py``); the newest batches
with their progress (``web/batches.py``, shown once the store has one); the outbox's depth,
the age of its oldest message and the relays listening (``OutboxRows.status``, the read
behind the worker's outbox gauges)."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

import anyio
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.audit.gates import format_seconds, reliable_task_names
from celery_reliable.beat.status import (
    EntryStatus,
    entries_of,
    entry_statuses,
    read_runs,
    scheduler_is_ours,
)
from celery_reliable.delivery.queue_depth import read_depths
from celery_reliable.metrics import LIMITED
from celery_reliable.outcomes import Outcome
from celery_reliable.store.batches import SEALED
from celery_reliable.store.outbox import OutboxStatus
from celery_reliable.store.pauses import QUEUE, TASK, Pause
from celery_reliable.store.timeutil import utcnow
from celery_reliable.web import batches, chart
from celery_reliable.web.common import celery_app, render, store

logger = logging.getLogger("celery_reliable.web")

#: Seconds between the overview's reloads; ``?refresh=0`` stops them.
REFRESH_SECONDS = 5
#: Longest wait for the broker's queue depths before the page is shown without them.
DEPTH_TIMEOUT = 3.0
#: Batches the overview shows (the newest).
BATCHES_SHOWN = 5


@dataclass(frozen=True)
class TaskRow:
    name: str
    hour: dict[str, int]
    day: dict[str, int]
    chart: chart.Chart
    error_rate_hour: float | None
    error_rate_day: float | None
    dead_pending: int


async def overview(request: Request) -> Response:
    refresh = request.query_params.get("refresh", "")
    refresh_seconds = int(refresh) if re.fullmatch("[0-9]{1,4}", refresh) else REFRESH_SECONDS
    depths, depth_error = await _queue_depths(request)
    rows, total, last_minute = await anyio.to_thread.run_sync(_task_rows, request)
    pauses = await anyio.to_thread.run_sync(_pauses, request)
    periodic = await anyio.to_thread.run_sync(_periodic, request)
    outbox = await anyio.to_thread.run_sync(_outbox, request)
    recent_batches = await anyio.to_thread.run_sync(_batches, request)
    return render(
        request,
        "overview.html",
        page="overview",
        refresh=refresh_seconds,
        tasks=rows,
        total=total,
        total_chart=chart.chart(total, last_minute, width=720, height=90),
        depths=depths,
        depth_error=depth_error,
        # A wait for a limit's slot is counted apart from snoozes (metrics.LIMITED).
        outcomes=[*(outcome.value for outcome in Outcome), LIMITED],
        now=utcnow(),
        pauses=pauses,
        paused={kind: _by_name(pauses, kind) for kind in (QUEUE, TASK)},
        periodic=periodic,
        periodic_recorded=scheduler_is_ours(celery_app(request)),
        outbox=outbox,
        batches=recent_batches,
        format_seconds=format_seconds,
    )


def _batches(request: Request) -> list[batches.Listed]:
    """The newest few batches, each with its progress and whether it looks stuck."""
    rows = store(request).batches
    found = rows.page(limit=BATCHES_SHOWN)
    endings = rows.last_endings([b.id for b in found if b.state == SEALED])
    now = utcnow()
    return [
        batches.Listed(
            b, batches.percent(b), batches.bar(b), batches.stuck(b, endings.get(b.id), now)
        )
        for b in found
    ]


def _outbox(request: Request) -> OutboxStatus:
    return store(request).outbox.status(relays=True)


def _periodic(request: Request) -> list[EntryStatus]:
    app = celery_app(request)
    if not entries_of(app):
        return []
    return entry_statuses(app, read_runs(store(request)))


def _pauses(request: Request) -> list[Pause]:
    return store(request).pauses.all()


def _by_name(pauses: list[Pause], kind: str) -> dict[str, Pause]:
    return {row.name: row for row in pauses if row.kind == kind}


def _task_rows(request: Request) -> tuple[list[TaskRow], dict[datetime, dict[str, int]], datetime]:
    found = store(request)
    now = utcnow()
    last_minute = now.replace(second=0, microsecond=0)
    history = found.history
    hour = history.counts_by_task(now - timedelta(hours=1))
    day = history.counts_by_task(now - timedelta(hours=24))
    minutes = chart.per_minute(history.minutes(since=last_minute - timedelta(minutes=59)))
    pending = found.dead_letters.pending_by_task()
    names = sorted(set(day) | set(pending) | set(reliable_task_names(celery_app(request))))
    rows = [
        TaskRow(
            name=name,
            hour=hour.get(name, {}),
            day=day.get(name, {}),
            chart=chart.chart(minutes.get(name, {}), last_minute),
            error_rate_hour=chart.error_rate(hour.get(name, {})),
            error_rate_day=chart.error_rate(day.get(name, {})),
            dead_pending=pending.get(name, 0),
        )
        for name in names
    ]
    return rows, chart.all_tasks(minutes), last_minute


async def _queue_depths(request: Request) -> tuple[list[tuple[str, int]], str | None]:
    app = celery_app(request)
    queues = sorted(app.amqp.queues.keys())
    reading: threading.Lock = request.app.state.depth_read
    # One read at a time: a broker that never answers holds one thread, not one per
    # page load.
    if not reading.acquire(blocking=False):
        return [], "the broker has not answered the previous read yet"

    def read() -> list[tuple[str, int]]:
        try:
            return read_depths(app, queues)
        finally:
            reading.release()

    try:
        with anyio.fail_after(DEPTH_TIMEOUT):
            depths = await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
    except TimeoutError:
        return [], f"the broker did not answer within {DEPTH_TIMEOUT:g} s"
    except Exception as exc:  # a broker down must not take the page with it
        logger.warning("queue depths not read: %s", exc)
        return [], f"the broker could not be read: {exc}"
    return depths, None
