"""Idempotency receipts and unique-enqueue locks: find them by task and key, see their
state and lease, release a claim whose worker is gone or a lock that holds up new jobs."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.store.timeutil import utcnow
from celery_reliable.web.common import COUNT_CAP, PAGE_ROWS, action_form, done, render, store

RECEIPT_STATES = ("in_progress", "abandoned", "succeeded")


def _cursor(text: str) -> tuple[str, str] | None:
    if not text:
        return None
    try:
        task_name, key = json.loads(base64.urlsafe_b64decode(text.encode()))
    except (ValueError, TypeError):
        task_name = key = None
    if not (isinstance(task_name, str) and isinstance(key, str)):
        raise HTTPException(400, "after: not a cursor this page made")
    return task_name, key


def _next(task_name: str, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([task_name, key]).encode()).decode()


def _given(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    return {n: v for n in names if (v := request.query_params.get(n, "").strip())}


async def receipts(request: Request) -> Response:
    given = _given(request, ("task", "key", "state"))
    state = given.get("state")
    if state and state not in RECEIPT_STATES:
        raise HTTPException(400, f"state must be one of {', '.join(RECEIPT_STATES)}")
    after = _cursor(request.query_params.get("after", ""))
    found = store(request).receipts
    now = utcnow()

    def read() -> tuple[list[Any], dict[str, int]]:
        rows = found.page(given.get("task"), given.get("key"), state, after, PAGE_ROWS + 1, now=now)
        return rows, found.counts(given.get("task"), now=now, cap=COUNT_CAP)

    rows, counts = await anyio.to_thread.run_sync(read)
    more = len(rows) > PAGE_ROWS
    rows = rows[:PAGE_ROWS]
    return render(
        request,
        "receipts.html",
        page="receipts",
        receipts=rows,
        counts=counts,
        given=given,
        states=RECEIPT_STATES,
        now=now,
        first=after is not None,
        query=urlencode(given),
        next=_next(rows[-1].task_name, rows[-1].key) if rows and more else None,
    )


async def locks(request: Request) -> Response:
    given = _given(request, ("task", "key"))
    after = _cursor(request.query_params.get("after", ""))
    found = store(request).unique
    rows = await anyio.to_thread.run_sync(
        lambda: found.page(given.get("task"), given.get("key"), after, PAGE_ROWS + 1)
    )
    more = len(rows) > PAGE_ROWS
    rows = rows[:PAGE_ROWS]
    return render(
        request,
        "locks.html",
        page="receipts",
        locks=rows,
        given=given,
        now=utcnow(),
        first=after is not None,
        query=urlencode(given),
        next=_next(rows[-1].task_name, rows[-1].key) if rows and more else None,
    )


def _target(form: Any) -> tuple[str, str, str]:
    fields = tuple(str(form.get(name) or "") for name in ("task", "key", "task_id"))
    if not all(fields):
        raise HTTPException(400, "task, key and task_id are required")
    return fields  # type: ignore[return-value]


async def release_claim(request: Request) -> Response:
    form = await action_form(request)
    task_name, key, task_id = _target(form)
    found = store(request).receipts
    if form.get("confirmed") != "1":
        receipt = await anyio.to_thread.run_sync(found.get, task_name, key)
        if receipt is None or receipt.task_id != task_id or receipt.state != "in_progress":
            raise HTTPException(404, f"no claim of task {task_id} on {task_name} / {key!r}")
        return render(
            request,
            "confirm_release.html",
            page="receipts",
            what="claim",
            item=receipt,
            live=receipt.lease_live(utcnow()),
            action="/receipts/release",
        )
    released = await anyio.to_thread.run_sync(found.release_claim, task_name, key, task_id)
    notice = (
        f"released the claim of {task_name} / {key}: the next execution with this key runs"
        if released
        else f"not released: {task_name} / {key} is no longer that claim (it ended meanwhile)"
    )
    return done(request, "/receipts?" + urlencode({"task": task_name, "key": key}), notice)


async def release_lock(request: Request) -> Response:
    form = await action_form(request)
    task_name, key, task_id = _target(form)
    found = store(request).unique
    if form.get("confirmed") != "1":
        holder = await anyio.to_thread.run_sync(found.holder, task_name, key)
        return render(
            request,
            "confirm_release.html",
            page="receipts",
            what="lock",
            item={"task_name": task_name, "key": key, "task_id": task_id},
            live=holder == task_id,
            action="/locks/release",
        )
    await anyio.to_thread.run_sync(found.release, task_name, key, task_id)
    notice = f"released the unique lock {task_name} / {key}: new jobs with this key are enqueued"
    return done(request, "/locks?" + urlencode({"task": task_name}), notice)
