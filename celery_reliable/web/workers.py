"""Workers: what each worker runs now, holds reserved and keeps scheduled (ETA and
countdown), asked with Celery's own remote control (``inspect``), as Sidekiq's Busy
and Scheduled pages show them; and, from the store, the last heartbeat of every
running job with one (its progress), which needs no worker to answer, and the recent
cancels. Each job has a Cancel button (``longrun/cancel.py``: the cancel holds across
retries and restarts), which asks for a confirmation first."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import anyio
from celery import Celery
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.config import settings_for
from celery_reliable.errors import StoreUnavailable
from celery_reliable.longrun.cancel import Cancellation, cancel_job, where_is
from celery_reliable.longrun.progress import Progress, running, stale_after
from celery_reliable.store import store_for
from celery_reliable.store.timeutil import utcnow
from celery_reliable.web.common import action_form, caller, celery_app, done, render, store

logger = logging.getLogger("celery_reliable.web")

#: How long workers have to answer: the page waits this long (all three questions are
#: asked at once).
INSPECT_TIMEOUT = 1.0
#: Longest the page waits for the broker before it says so.
BROKER_TIMEOUT = 5.0
QUESTIONS = ("active", "reserved", "scheduled")
#: Running jobs with a heartbeat shown at most.
BEATS_SHOWN = 200
#: Recent cancels shown.
CANCELS_SHOWN = 20
#: The longest reason a cancel keeps from the form.
REASON_LENGTH = 1000


@dataclass(frozen=True)
class Job:
    task_name: str
    task_id: str
    #: The arguments as Celery reports them; None when the task's are redacted.
    arguments: str | None
    started: datetime | None = None
    eta: datetime | None = None


@dataclass
class Worker:
    name: str
    running: list[Job] = field(default_factory=list)
    reserved: list[Job] = field(default_factory=list)
    scheduled: list[Job] = field(default_factory=list)


@dataclass(frozen=True)
class Beating:
    """A running job's last heartbeat, as the page shows it."""

    beat: Progress
    age: float
    #: ``stale: ...`` when its worker seems gone (``cli/progress.py``), else None.
    stale: str | None


async def workers_page(request: Request) -> Response:
    app = celery_app(request)
    error = None
    workers: list[Worker] = []
    beating, beats_error = await anyio.to_thread.run_sync(_beating, app)
    cancels = await anyio.to_thread.run_sync(_recent_cancels, app)
    try:
        with anyio.fail_after(BROKER_TIMEOUT):
            answers = await anyio.to_thread.run_sync(_ask, app, abandon_on_cancel=True)
        workers = _workers(app, answers)
    except TimeoutError:
        error = f"the broker did not answer within {BROKER_TIMEOUT:g} s"
    except Exception as exc:  # a broker down must not take the page with it
        logger.warning("workers not inspected: %s", exc)
        error = f"the workers could not be asked: {exc}"
    return render(
        request,
        "workers.html",
        page="workers",
        workers=workers,
        error=error,
        now=utcnow(),
        timeout=INSPECT_TIMEOUT,
        beating=beating,
        beats_error=beats_error,
        cancels=cancels,
    )


async def cancel(request: Request) -> Response:
    """POST ``task_id`` (and ``task``, its name, for the page): first a confirmation
    saying what the cancel will do to the job, then (``confirmed=1``, with a reason)
    the cancel itself, and back to the workers page with a notice."""
    form = await action_form(request)
    task_id = str(form.get("task_id") or "").strip()
    if not task_id:
        raise HTTPException(400, "task_id is required")
    app = celery_app(request)
    found = store(request)
    if form.get("confirmed") != "1":
        stage, fate = await anyio.to_thread.run_sync(where_is, app, task_id)
        before = await anyio.to_thread.run_sync(found.cancels.get, task_id)
        return render(
            request,
            "confirm_cancel.html",
            page="workers",
            task_id=task_id,
            task_name=str(form.get("task") or ""),
            stage=stage,
            fate=fate,
            before=before,
        )
    reason = str(form.get("reason") or "").strip()[:REASON_LENGTH] or None
    who = caller(request)
    cancelled = await anyio.to_thread.run_sync(lambda: cancel_job(app, task_id, reason, who))
    if cancelled.new:
        notice = f"cancelled {task_id}: {cancelled.fate}"
    else:
        notice = f"{task_id} was already {cancelled.cancellation.describe()}: {cancelled.fate}"
    if cancelled.broadcast_error is not None:
        notice += "; the workers read it from the store within seconds"
    return done(request, "/workers", notice)


def _recent_cancels(app: Celery) -> list[Cancellation]:
    """The most recent cancels; none when the store cannot say (the heartbeats' panel
    already says why)."""
    found = store_for(app)
    if found is None:
        return []
    try:
        return found.cancels.all(CANCELS_SHOWN)
    except StoreUnavailable:
        return []


def _beating(app: Celery) -> tuple[list[Beating], str | None]:
    """The running jobs with a heartbeat; an error line instead when the store cannot
    say (the page still shows what the workers answered)."""
    try:
        beats = running(app, limit=BEATS_SHOWN)
    except StoreUnavailable as exc:
        return [], f"heartbeats not read: the store is unavailable ({exc})"
    now = utcnow()
    shown = []
    for beat in beats:
        age = beat.age(now)
        limit = stale_after(app, beat.task_name)
        stale = (
            f"no beat for {age:.0f} s: its worker may be gone"
            if limit is not None and age > limit
            else None
        )
        shown.append(Beating(beat, age, stale))
    return shown, None


def _ask(app: Celery) -> dict[str, dict[str, Any]]:
    """``question -> worker -> answer``, the three questions asked at once."""

    def ask(question: str) -> dict[str, Any]:
        with app.connection_for_write() as connection:
            # A broker that is down: one quick retry, not Celery's publish retries.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=1)
            inspect = app.control.inspect(timeout=INSPECT_TIMEOUT, connection=connection)
            return getattr(inspect, question)() or {}

    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        return dict(zip(QUESTIONS, pool.map(ask, QUESTIONS), strict=True))


def _workers(app: Celery, answers: dict[str, dict[str, Any]]) -> list[Worker]:
    settings = settings_for(app)
    names = sorted({name for answer in answers.values() for name in answer})
    workers = []
    for name in names:
        worker = Worker(name)
        for info in answers["active"].get(name) or []:
            worker.running.append(_job(app, settings, info))
        for info in answers["reserved"].get(name) or []:
            worker.reserved.append(_job(app, settings, info))
        for entry in answers["scheduled"].get(name) or []:
            eta = _moment(entry.get("eta"))
            worker.scheduled.append(_job(app, settings, entry.get("request") or {}, eta=eta))
        worker.scheduled.sort(key=lambda job: job.eta or datetime.max)
        workers.append(worker)
    return workers


def _job(app: Celery, settings: Any, info: dict[str, Any], eta: datetime | None = None) -> Job:
    name = str(info.get("name") or "?")
    task = app.tasks.get(name)
    redacted = bool(getattr(task, "dead_letter_redact", False)) or settings.redacts(name)
    started = info.get("time_start")
    return Job(
        task_name=name,
        task_id=str(info.get("id") or ""),
        arguments=None if redacted else _arguments(info),
        started=(
            datetime.fromtimestamp(started, timezone.utc).replace(tzinfo=None)
            if isinstance(started, (int, float))
            else None
        ),
        eta=eta,
    )


def _arguments(info: dict[str, Any]) -> str:
    args, kwargs = info.get("args"), info.get("kwargs")
    text = f"{args!s}" if not isinstance(args, str) else args
    if kwargs:
        text += f" {kwargs!s}" if not isinstance(kwargs, str) else f" {kwargs}"
    return text


def _moment(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment
