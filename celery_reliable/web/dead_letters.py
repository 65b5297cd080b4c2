"""Dead letters: filter, inspect, and retry or purge one, the selected ones, or every
one the filter matches, each after a confirmation that says how many."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.errors import DeadLetterError
from celery_reliable.store.dead_letters import DeadLetter, DeadLetterFilter
from celery_reliable.store.timeutil import utcnow
from celery_reliable.web.common import PAGE_ROWS, action_form, done, plural, render, store

OUTCOMES = ("discarded", "exhausted", "failed")
STATES = ("pending", "retried")
PERIODS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
FILTER_FIELDS = ("task", "outcome", "period", "from", "to", "q", "state")
#: Rows shown on a confirmation page, as a sample of what the action covers.
SAMPLE_ROWS = 10


def parse_filter(values: Mapping[str, Any]) -> tuple[DeadLetterFilter, dict[str, str]]:
    """The filter of a query string or a form, and its fields as given (for links and
    hidden inputs). A value that makes no sense is a 400 naming it."""
    given = {name: str(values.get(name) or "").strip() for name in FILTER_FIELDS}
    if given["outcome"] and given["outcome"] not in OUTCOMES:
        raise HTTPException(400, f"outcome must be one of {', '.join(OUTCOMES)}")
    if given["state"] and given["state"] not in STATES:
        raise HTTPException(400, f"state must be one of {', '.join(STATES)}")
    if given["period"] and given["period"] not in PERIODS:
        raise HTTPException(400, f"period must be one of {', '.join(PERIODS)}")
    since = utcnow() - PERIODS[given["period"]] if given["period"] else None
    start = _moment("from", given["from"])
    if start is not None:
        since = max(since, start) if since else start
    return (
        DeadLetterFilter(
            task_name=given["task"] or None,
            outcome=given["outcome"] or None,
            since=since,
            until=_moment("to", given["to"]),
            text=given["q"] or None,
            state=given["state"] or None,
        ),
        {name: value for name, value in given.items() if value},
    )


def _moment(name: str, text: str) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            400, f"{name}: {text!r} is not a date and time (2026-11-24T09:30)"
        ) from None


def _page_cursor(request: Request, name: str) -> int | None:
    value = request.query_params.get(name, "")
    if not value:
        return None
    if not value.isdigit():
        raise HTTPException(400, f"{name} must be a dead letter id")
    return int(value)


async def listing(request: Request) -> Response:
    where, given = parse_filter(request.query_params)
    before = _page_cursor(request, "before")
    after = _page_cursor(request, "after")
    letters = store(request).dead_letters

    def read() -> tuple[list[DeadLetter], int, list[str], bool, bool]:
        rows = letters.page(where, PAGE_ROWS + 1, before_id=before, after_id=after)
        more = len(rows) > PAGE_ROWS
        if after is not None:
            rows, newer, older = rows[-PAGE_ROWS:], more, True
        else:
            rows, newer, older = rows[:PAGE_ROWS], before is not None, more
        return rows, letters.count_where(where), letters.task_names(), newer, older

    rows, matching, tasks, newer, older = await anyio.to_thread.run_sync(read)
    query = urlencode(given)
    return render(
        request,
        "dead_letters.html",
        page="dead",
        letters=rows,
        matching=matching,
        tasks=tasks,
        given=given,
        query=query,
        outcomes=OUTCOMES,
        periods=list(PERIODS),
        newer=f"after={rows[0].id}" if rows and newer else None,
        older=f"before={rows[-1].id}" if rows and older else None,
    )


async def detail(request: Request) -> Response:
    dead_letter_id = int(request.path_params["dead_letter_id"])
    letter = await anyio.to_thread.run_sync(store(request).dead_letters.get, dead_letter_id)
    if letter is None:
        raise HTTPException(404, f"no dead letter {dead_letter_id}")
    history = letter.options.get("retry_history") or []
    return render(
        request,
        "dead_letter.html",
        page="dead",
        letter=letter,
        args=_pretty(letter.args, letter.args_repr),
        kwargs=_pretty(letter.kwargs, letter.kwargs_repr),
        history=[
            (
                attempt,
                datetime.utcfromtimestamp(at) if isinstance(at, (int, float)) else None,
                reason,
            )
            for attempt, at, reason in history
        ],
        headers=json.dumps(letter.options.get("headers") or {}, indent=2, default=str),
    )


def _pretty(value: Any, text: str | None) -> str:
    if text is not None:
        return text
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


async def act(request: Request) -> Response:
    """POST: ``do`` is ``retry-`` or ``purge-`` and ``one``, ``selected`` or
    ``matching`` (every row the filter matches)."""
    form = await action_form(request)
    do, _, scope = str(form.get("do") or "").partition("-")
    if do not in ("retry", "purge") or scope not in ("one", "selected", "matching"):
        raise HTTPException(400, "do must be retry-/purge- and one, selected or matching")
    where, given = parse_filter(form)
    ids = _ids(form.getlist("id"))
    if scope in ("one", "selected") and not ids:
        raise HTTPException(400, "no dead letter selected: tick at least one")
    force = scope == "one" and form.get("force") == "1"
    letters = store(request).dead_letters
    covered = where.pending() if do == "retry" else where
    if form.get("confirmed") != "1":

        def preview() -> tuple[int, list[DeadLetter]]:
            if scope == "matching":
                return letters.count_where(covered), letters.page(covered, SAMPLE_ROWS)
            found = [letter for i in ids[:SAMPLE_ROWS] if (letter := letters.get(i))]
            return len(ids), found

        count, sample = await anyio.to_thread.run_sync(preview)
        return render(
            request,
            "confirm.html",
            page="dead",
            do=do,
            scope=scope,
            count=count,
            sample=sample,
            ids=ids,
            force=force,
            given=given,
            query=urlencode(given),
        )
    if do == "purge":

        def purge() -> int:
            if scope == "matching":
                return letters.purge_where(where)
            return letters.purge(ids=ids)

        purged = await anyio.to_thread.run_sync(purge)
        notice = f"purged {plural(purged, 'dead letter')}"
        return done(request, "/dead-letters" + _query(given if scope == "matching" else {}), notice)
    retried, refused = await anyio.to_thread.run_sync(
        _retry, letters, ids if scope != "matching" else None, covered, force
    )
    notice = f"retried {plural(retried, 'dead letter')}"
    if refused:
        notice += f"; {len(refused)} not retried: " + "; ".join(refused[:3])
        if len(refused) > 3:
            notice += f"; and {len(refused) - 3} more"
    target = f"/dead-letters/{ids[0]}" if scope == "one" else "/dead-letters" + _query(given)
    return done(request, target, notice)


def _retry(
    letters: Any, ids: list[int] | None, where: DeadLetterFilter, force: bool
) -> tuple[int, list[str]]:
    retried, refused = 0, []

    def one(dead_letter_id: int) -> None:
        nonlocal retried
        try:
            letters.retry(dead_letter_id, force=force)
            retried += 1
        except DeadLetterError as exc:
            refused.append(str(exc))

    if ids is not None:
        for dead_letter_id in ids:
            one(dead_letter_id)
        return retried, refused
    after = 0
    while chunk := letters.ids_where(where, after_id=after):
        for dead_letter_id in chunk:
            one(dead_letter_id)
        after = chunk[-1]
    return retried, refused


def _ids(values: list[Any]) -> list[int]:
    try:
        return sorted({int(value) for value in values})
    except ValueError:
        raise HTTPException(400, "id must be a dead letter id (a number)") from None


def _query(given: Mapping[str, str]) -> str:
    return "?" + urlencode(given) if given else ""
