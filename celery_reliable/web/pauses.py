"""Pause and Resume buttons (the overview's queues and tasks, and its list of pauses):
what ``celery reliable pause`` / ``resume`` do (``limits/pause.py``), each asking for a
confirmation first."""

from __future__ import annotations

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.errors import UnknownTask
from celery_reliable.limits.pause import QUEUE, TASK, pause, resume
from celery_reliable.store.pauses import KINDS
from celery_reliable.web.common import action_form, caller, celery_app, done, render, store

#: The longest reason a pause keeps from the form.
REASON_LENGTH = 1000

#: What the confirmation says each does.
EFFECTS = {
    ("pause", QUEUE): (
        "No worker takes its messages from now on; they wait in the broker until it is "
        "resumed. Jobs running now go on to their end."
    ),
    ("pause", TASK): (
        "No worker starts it from now on: its messages wait, in the broker or held "
        "unacknowledged by a worker, until it is resumed. Jobs running now go on to "
        "their end; what waits spends no attempt."
    ),
    ("resume", QUEUE): "Every worker that consumed it takes its messages again within seconds.",
    ("resume", TASK): "Every worker starts it again within seconds, the messages it held first.",
}


async def _target(request: Request) -> tuple[str, str, str, dict[str, object]]:
    form = await action_form(request)
    kind = str(form.get("kind") or "")
    name = str(form.get("name") or "").strip()
    if kind not in KINDS or not name:
        raise HTTPException(400, "kind (queue or task) and name are required")
    return kind, name, str(form.get("confirmed") or ""), dict(form)


async def pause_action(request: Request) -> Response:
    """POST ``kind`` and ``name``: first a confirmation saying what the pause does,
    then (``confirmed=1``, with a reason) the pause, and back to the overview."""
    kind, name, confirmed, form = await _target(request)
    app = celery_app(request)
    found = store(request)
    if confirmed != "1":
        before = await anyio.to_thread.run_sync(found.pauses.get, kind, name)
        return render(
            request,
            "confirm_pause.html",
            page="overview",
            action="pause",
            kind=kind,
            name=name,
            effect=EFFECTS[("pause", kind)],
            before=before,
        )
    reason = str(form.get("reason") or "").strip()[:REASON_LENGTH] or None
    who = caller(request)
    try:
        paused = await anyio.to_thread.run_sync(lambda: pause(app, kind, name, reason, who))
    except UnknownTask as exc:
        raise HTTPException(400, str(exc)) from exc
    if paused.new:
        notice = f"paused {kind} {name}: {paused.fate}"
    else:
        notice = f"{kind} {name} was already paused: that pause stands"
    if paused.broadcast_error is not None:
        notice += "; the workers read it from the store within seconds"
    return done(request, "/", notice)


async def resume_action(request: Request) -> Response:
    """POST ``kind`` and ``name``: a confirmation, then the resume."""
    kind, name, confirmed, _ = await _target(request)
    app = celery_app(request)
    found = store(request)
    if confirmed != "1":
        before = await anyio.to_thread.run_sync(found.pauses.get, kind, name)
        return render(
            request,
            "confirm_pause.html",
            page="overview",
            action="resume",
            kind=kind,
            name=name,
            effect=EFFECTS[("resume", kind)],
            before=before,
        )
    resumed = await anyio.to_thread.run_sync(lambda: resume(app, kind, name))
    notice = resumed.fate if resumed.pause is None else f"resumed {kind} {name}: {resumed.fate}"
    if resumed.broadcast_error is not None:
        notice += "; the workers read it from the store within seconds"
    return done(request, "/", notice)
