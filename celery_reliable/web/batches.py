"""Batches (``celery_reliable.Batch``): a listing, newest first, with each one's
progress and outcomes, and a page per batch with its members (a page at a time: a
batch may have 10,000), the dead letters of those that ended badly, and its callbacks.
Read-only: a batch has nothing to act on (its members' dead letters have their own
actions).

A batch that looks stuck is said to be: sealed, and no member has ended for
:data:`QUIET_AFTER` (its members may be long, or waiting in a deep queue: the page
says how long, not why), or still open that long after it was created (the process
running its block died, or the block is long)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.audit.gates import format_seconds
from celery_reliable.store.batches import (
    ABANDONED,
    BAD,
    CALLBACKS,
    COMPLETED,
    ENDINGS,
    OPEN,
    PENDING,
    SEALED,
    STATES,
    BatchRow,
    MemberRow,
    callback_task,
)
from celery_reliable.store.timeutil import utcnow
from celery_reliable.web import retried
from celery_reliable.web.common import COUNT_CAP, PAGE_ROWS, render, store

#: A sealed batch none of whose members ended for this long (or an open one this
#: old) is shown as possibly stuck.
QUIET_AFTER = timedelta(minutes=15)
#: Longest text a cursor or filter takes (a task id, a batch id, a description's part).
LONGEST = 255


#: The progress bar's colours: which endings each one adds up (the chart's classes).
BAR = (("ok", ("succeeded", "duplicate")), ("cancelled", ("cancelled",)), ("error", BAD))


@dataclass(frozen=True)
class Segment:
    """One colour of a progress bar, in percent of its width."""

    css: str
    x: float
    width: float
    count: int


def bar(batch: BatchRow) -> list[Segment]:
    """The progress bar's segments: the members ended, by colour, left to right; what
    is left of the width is the members pending (none while the batch is open: its
    total is not known, so the bar stays empty)."""
    if not batch.total:
        return []
    segments, x = [], 0.0
    for css, outcomes in BAR:
        count = sum(batch.outcomes[outcome] for outcome in outcomes)
        if count:
            width = round(100 * count / batch.total, 2)
            segments.append(Segment(css, round(x, 2), width, count))
            x += width
    return segments


@dataclass(frozen=True)
class Listed:
    """A batch as a row of the listing shows it."""

    batch: BatchRow
    #: How far along, 0 to 100 (None while open: its total is not known yet).
    percent: int | None
    bar: list[Segment]
    #: "no member ended for 42m" / "open for 2h": why it looks stuck, else None.
    stuck: str | None


@dataclass(frozen=True)
class Callback:
    """One callback of a batch, as the batch's page shows it."""

    which: str
    #: ``<batch id>-on_complete``; None for a canvas (it keeps Celery's ids).
    task_id: str | None
    #: The task its signature names (a canvas: ``celery.chain``...).
    task_name: str | None
    #: "not fired yet", "not fired: a member failed", or what became of it.
    label: str
    css: str
    dead_letter: int | None = None
    source: str = ""


def percent(batch: BatchRow) -> int | None:
    if batch.total is None:
        return None
    if batch.total == 0:
        return 100
    # Rounded down: 100 only when every member has ended.
    return batch.done * 100 // batch.total


def stuck(batch: BatchRow, last_ending: datetime | None, now: datetime) -> str | None:
    """Why ``batch`` looks stuck, or None."""
    if batch.state == OPEN and now - batch.created_at >= QUIET_AFTER:
        return f"open for {format_seconds((now - batch.created_at).total_seconds())}"
    if batch.state != SEALED:
        return None
    quiet_since = max(filter(None, (batch.sealed_at, last_ending)), default=batch.created_at)
    if now - quiet_since < QUIET_AFTER:
        return None
    quiet = format_seconds((now - quiet_since).total_seconds())
    return f"no member ended for {quiet}"


def _text(request: Request, name: str) -> str:
    value = request.query_params.get(name, "").strip()
    if len(value) > LONGEST:
        raise HTTPException(400, f"{name}: at most {LONGEST} characters")
    return value


async def listing(request: Request) -> Response:
    given = {name: value for name in ("state", "q") if (value := _text(request, name))}
    state = given.get("state")
    if state and state not in STATES:
        raise HTTPException(400, f"state must be one of {', '.join(STATES)}")
    before, after = _text(request, "before") or None, _text(request, "after") or None
    rows = store(request).batches
    now = utcnow()

    def read() -> tuple[list[BatchRow], int, dict[str, datetime]]:
        found = rows.page(
            state=state, text=given.get("q"), before=before, after=after, limit=PAGE_ROWS + 1
        )
        matching = rows.count(state=state, text=given.get("q"), cap=COUNT_CAP)
        sealed = [b.id for b in found if b.state == SEALED]
        return found, matching, rows.last_endings(sealed)

    found, matching, endings = await anyio.to_thread.run_sync(read)
    more = len(found) > PAGE_ROWS
    if after is not None:
        found, newer, older = found[-PAGE_ROWS:], more, True
    else:
        found, newer, older = found[:PAGE_ROWS], before is not None, more
    return render(
        request,
        "batches.html",
        page="batches",
        batches=[Listed(b, percent(b), bar(b), stuck(b, endings.get(b.id), now)) for b in found],
        matching=matching,
        given=given,
        query=urlencode(given),
        states=STATES,
        endings=ENDINGS,
        newer=urlencode({"after": found[0].id}) if found and newer else None,
        older=urlencode({"before": found[-1].id}) if found and older else None,
    )


async def detail(request: Request) -> Response:
    batch_id = str(request.path_params["batch_id"])
    outcome = _text(request, "outcome") or None
    if outcome is not None and outcome not in (*ENDINGS, PENDING):
        raise HTTPException(400, f"outcome must be one of {', '.join((*ENDINGS, PENDING))}")
    before, after = _text(request, "before") or None, _text(request, "after") or None
    found = store(request)
    now = utcnow()

    def read() -> tuple[BatchRow | None, list[MemberRow], datetime | None, dict[str, Any]]:
        batch = found.batches.get(batch_id)
        if batch is None:
            return None, [], None, {}
        members = found.batches.member_page(
            batch_id, outcome=outcome, before=before, after=after, limit=PAGE_ROWS + 1
        )
        last = found.batches.last_endings([batch_id]).get(batch_id)
        # The dead letters of this page's members that ended badly, and the
        # callbacks' own (a callback is an ordinary task: it may end in one).
        bad = [m.task_id for m in members if m.outcome in BAD]
        letters = found.dead_letters.of_task_ids([*bad, *_callback_ids(batch)])
        return batch, members, last, {t: d.id for t, d in letters.items()}

    batch, members, last, letters = await anyio.to_thread.run_sync(read)
    if batch is None:
        raise HTTPException(
            404, f"no batch {batch_id} (completed batches are pruned after reliable_receipt_ttl)"
        )
    more = len(members) > PAGE_ROWS
    if before is not None:
        members, previous, following = members[-PAGE_ROWS:], more, True
    else:
        members, previous, following = members[:PAGE_ROWS], after is not None, more
    given = {"outcome": outcome} if outcome else {}
    return render(
        request,
        "batch.html",
        page="batches",
        batch=batch,
        percent=percent(batch),
        bar=bar(batch),
        stuck=stuck(batch, last, now),
        last_ending=last,
        pending=None if batch.total is None else batch.total - batch.done,
        members=members,
        letters=letters,
        callbacks=await _callbacks(request, batch, letters),
        given=given,
        query=urlencode(given),
        endings=ENDINGS,
        bad=BAD,
        previous=urlencode({"before": members[0].task_id}) if members and previous else None,
        following=urlencode({"after": members[-1].task_id}) if members and following else None,
    )


def _callback_ids(batch: BatchRow) -> list[str]:
    return [f"{batch.id}-{which}" for which in CALLBACKS if getattr(batch, which) is not None]


def _is_canvas(task_name: str | None) -> bool:
    """A chain or group as callback: published with Celery's own ids, not the batch's."""
    return task_name is None or task_name.startswith("celery.")


async def _callbacks(request: Request, batch: BatchRow, letters: dict[str, int]) -> list[Callback]:
    """Each callback the batch has, and what is cheaply known of it: not fired while
    the batch is not completed; its dead letter if it ended in one; else its state in
    the result backend (read with the dead letters' retries' time limit)."""
    shown: list[Callback] = []
    ask: list[str] = []
    for which in CALLBACKS:
        raw = getattr(batch, which)
        if raw is None:
            continue
        name = callback_task(raw)
        task_id = None if _is_canvas(name) else f"{batch.id}-{which}"
        if batch.state == ABANDONED:
            label, css = "never fires: the block raised", "failed"
        elif batch.state != COMPLETED:
            label, css = "not fired yet", "pending"
        elif which == "on_success" and not batch.succeeded:
            label, css = "not fired: a member ended badly", "cancelled"
        elif task_id is None:
            label, css = "fired (a canvas: Celery's own task ids)", "succeeded"
        elif task_id in letters:
            label, css = "dead letter", "failed"
        else:
            label, css = "fired", "succeeded"
            ask.append(task_id)
        letter = letters.get(task_id) if task_id is not None else None
        shown.append(Callback(which, task_id, name, label, css, letter))
    if ask:
        fates = await retried.backend_fates(request, ask)
        shown = [
            Callback(c.which, c.task_id, c.task_name, f"fired: {f.label}", f.css, None, f.source)
            if c.task_id is not None and (f := fates.get(c.task_id)) is not None
            else c
            for c in shown
        ]
    return shown
