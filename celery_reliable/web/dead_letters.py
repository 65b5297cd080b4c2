"""Dead letters: filter, inspect, and retry or purge one, the selected ones, or every
one the filter matches, each after a confirmation that says how many."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.errors import DeadLetterError, StoreUnavailable
from celery_reliable.store.dead_letters import DeadLetter, DeadLetterFilter
from celery_reliable.store.timeutil import utcnow
from celery_reliable.web import retried
from celery_reliable.web.common import (
    COUNT_CAP,
    PAGE_ROWS,
    action_form,
    done,
    plural,
    render,
    store,
)

logger = logging.getLogger("celery_reliable.web")

OUTCOMES = ("discarded", "exhausted", "failed")
STATES = ("pending", "retried")
PERIODS = {
    "1h": timedelta(hours=1),
    "24h": timedelta(days=1),
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
}
FILTER_FIELDS = ("task", "outcome", "period", "from", "to", "q", "state")
#: An id: ASCII digits that fit the column (``isdigit`` takes "²").
ID = re.compile(r"[0-9]{1,18}")
#: Rows shown on a confirmation page, as a sample of what the action covers.
SAMPLE_ROWS = 10
#: What From and To take: a time as the tables write it (``2026-11-24 09:30``), to the
#: day, the minute or the second, with a space or a ``T``, in UTC unless it carries an
#: offset. The text inputs' ``pattern`` too, so that the browser refuses what the server
#: would (a JavaScript pattern under the ``v`` flag, hence the escaped ``-``).
TIME_PATTERN = (
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})"
    r"(?:[ T]([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?(Z|[+\-][0-9]{2}:[0-9]{2})?)?"
)
TIME = re.compile(TIME_PATTERN)


def parse_filter(
    values: Mapping[str, Any], now: datetime | None = None
) -> tuple[DeadLetterFilter, dict[str, str]]:
    """The filter of a query string or a form, and its fields as given (for links and
    hidden inputs); a ``period`` counts back from ``now``. A value that makes no sense
    is a 400 naming it."""
    given = {name: str(values.get(name) or "").strip() for name in FILTER_FIELDS}
    if given["outcome"] and given["outcome"] not in OUTCOMES:
        raise HTTPException(400, f"outcome must be one of {', '.join(OUTCOMES)}")
    if given["state"] and given["state"] not in STATES:
        raise HTTPException(400, f"state must be one of {', '.join(STATES)}")
    if given["period"] and given["period"] not in PERIODS:
        raise HTTPException(400, f"period must be one of {', '.join(PERIODS)}")
    since = (now or utcnow()) - PERIODS[given["period"]] if given["period"] else None
    start = _filter_time("from", given["from"])
    if start is not None:
        since = max(since, start[0]) if since else start[0]
    end = _filter_time("to", given["to"])
    # To includes the whole of what it names: "to 09:30" 09:30:59, "to 2026-11-24" that
    # day's last second.
    until = end[0] + end[1] if end is not None else None
    return (
        DeadLetterFilter(
            task_name=given["task"] or None,
            outcome=given["outcome"] or None,
            since=since,
            until=until,
            text=given["q"] or None,
            state=given["state"] or None,
        ),
        {name: value for name, value in given.items() if value},
    )


def _filter_time(name: str, text: str) -> tuple[datetime, timedelta] | None:
    """A From or To time as UTC without a zone (the store's columns), and how much time
    it names (a day, a minute or a second); None when empty. Strict: only
    :data:`TIME_PATTERN`, never a guess at another order of day and month."""
    if not text:
        return None
    wrong = HTTPException(
        400,
        f"{name}: {text!r} is not a date and time: write YYYY-MM-DD HH:MM (UTC), "
        "e.g. 2026-11-24 09:30, or a day alone",
    )
    found = TIME.fullmatch(text)
    if found is None:
        raise wrong
    year, month, day, hour, minute, second, offset = found.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0)
        )
        if offset and offset != "Z":
            zone = timezone(
                (-1 if offset[0] == "-" else 1)
                * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            )
            moment = moment.replace(tzinfo=zone).astimezone(timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):  # 2026-13-01, 25:00, an offset of 24 h or more
        raise wrong from None
    if hour is None:
        return moment, timedelta(days=1)
    return moment, timedelta(minutes=1) if second is None else timedelta(seconds=1)


def _moment(name: str, text: str) -> datetime | None:
    """A time as UTC without a zone (the store's columns); one with an offset is
    turned to UTC, one without is taken as UTC."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(
            400, f"{name}: {text!r} is not a date and time (2026-11-24T09:30)"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment


def row_id(value: str, name: str) -> int | None:
    """A dead letter id from a form or query string; None when empty."""
    if not value:
        return None
    if not ID.fullmatch(value):
        raise HTTPException(400, f"{name} must be a dead letter id (a number)")
    return int(value)


def _page_cursor(request: Request, name: str) -> int | None:
    return row_id(request.query_params.get(name, ""), name)


async def listing(request: Request) -> Response:
    where, given = parse_filter(request.query_params)
    before = _page_cursor(request, "before")
    after = _page_cursor(request, "after")
    letters = store(request).dead_letters

    def read() -> tuple[list[DeadLetter], int, list[str], bool, bool]:
        rows, matching = letters.page_and_count(
            where, PAGE_ROWS + 1, before_id=before, after_id=after, cap=COUNT_CAP
        )
        more = len(rows) > PAGE_ROWS
        if after is not None:
            rows, newer, older = rows[-PAGE_ROWS:], more, True
        else:
            rows, newer, older = rows[:PAGE_ROWS], before is not None, more
        return rows, matching, letters.task_names(), newer, older

    rows, matching, tasks, newer, older = await anyio.to_thread.run_sync(read)
    query = urlencode(given)
    return render(
        request,
        "dead_letters.html",
        page="dead",
        letters=rows,
        fates=await retried.fates(request, rows),
        matching=matching,
        tasks=tasks,
        given=given,
        query=query,
        outcomes=OUTCOMES,
        periods=list(PERIODS),
        time_pattern=TIME_PATTERN,
        newer=f"after={rows[0].id}" if rows and newer else None,
        older=f"before={rows[-1].id}" if rows and older else None,
    )


async def detail(request: Request) -> Response:
    dead_letter_id = int(request.path_params["dead_letter_id"])
    letter = None
    letters = store(request).dead_letters
    if dead_letter_id < 2**63:  # larger ids exist in no column (and overflow SQLite)
        letter = await anyio.to_thread.run_sync(letters.get, dead_letter_id)
    if letter is None:
        raise HTTPException(404, f"no dead letter {dead_letter_id}")
    history = letter.options.get("retry_history") or []
    found = letter

    def related() -> tuple[bool, list[DeadLetter]]:
        kept = found.retry_of is not None and letters.get(found.retry_of) is not None
        return kept, letters.retries_of(found.id)

    origin_kept, came_back = await anyio.to_thread.run_sync(related)
    fate = (await retried.fates(request, [letter])).get(letter.retried_task_id or "")
    return render(
        request,
        "dead_letter.html",
        page="dead",
        letter=letter,
        fate=fate,
        origin_kept=origin_kept,
        # The latest retry's dead letter is shown beside "Retried"; these are the
        # earlier ones (retried again with force after failing again).
        earlier=[d for d in came_back if fate is None or d.id != fate.dead_letter],
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
    short = json.dumps(value, default=str, ensure_ascii=False)
    return (
        short if len(short) <= 100 else json.dumps(value, indent=2, default=str, ensure_ascii=False)
    )


async def act(request: Request) -> Response:
    """POST: ``do`` is ``retry-`` or ``purge-`` and ``one``, ``selected`` or
    ``matching`` (every row the filter matches). Without ``confirmed`` it only asks;
    the confirmation carries what it counted (the highest id, the time a period
    counted back from), so the action covers that set, not rows that came since."""
    form = await action_form(request)
    do, _, scope = str(form.get("do") or "").partition("-")
    if do not in ("retry", "purge") or scope not in ("one", "selected", "matching"):
        raise HTTPException(400, "do must be retry-/purge- and one, selected or matching")
    asked_at = _moment("at", str(form.get("at") or "")) or utcnow()
    where, given = parse_filter(form, now=asked_at)
    ids = _ids(form.getlist("id"))
    if scope in ("one", "selected") and not ids:
        raise HTTPException(400, "no dead letter selected: tick at least one")
    force = scope == "one" and form.get("force") == "1"
    letters = store(request).dead_letters
    covered = where.pending() if do == "retry" else where
    upto = row_id(str(form.get("upto") or ""), "upto")
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
            at=asked_at.isoformat(),
            upto=sample[0].id if scope == "matching" and sample else 0,
        )
    covered = replace(covered, max_id=upto if upto is not None else 0)
    if do == "purge":

        def purge() -> int:
            if scope == "matching":
                return letters.purge_where(covered)
            return letters.purge(ids=ids)

        purged = await anyio.to_thread.run_sync(purge)
        notice = f"purged {plural(purged, 'dead letter')}"
        return done(request, "/dead-letters" + _query(given if scope == "matching" else {}), notice)
    retried, refused, stopped = await anyio.to_thread.run_sync(
        _retry, letters, ids if scope != "matching" else None, covered, force
    )
    notice = f"retried {plural(retried, 'dead letter')}"
    if refused:
        notice += f"; {len(refused)} not retried: " + "; ".join(refused[:3])
        if len(refused) > 3:
            notice += f"; and {len(refused) - 3} more"
    if stopped:
        notice += f"; stopped there, the rest not retried: {stopped}"
    target = f"/dead-letters/{ids[0]}" if scope == "one" else "/dead-letters" + _query(given)
    return done(request, target, notice)


def _retry(
    letters: Any, ids: list[int] | None, where: DeadLetterFilter, force: bool
) -> tuple[int, list[str], str | None]:
    """Retry the ids, or every row ``where`` matches; ``(retried, refusals, why it
    stopped)``. A row refused (redacted, retried meanwhile) is counted and skipped;
    a broker that cannot take a publish stops the walk (that row stays as it was)."""
    retried, refused = 0, []

    def walk() -> Iterator[int]:
        if ids is not None:
            yield from ids
            return
        after = 0
        while chunk := letters.ids_where(where, after_id=after):
            yield from chunk
            after = chunk[-1]

    for dead_letter_id in walk():
        try:
            letters.retry(dead_letter_id, force=force)
            retried += 1
        except DeadLetterError as exc:
            refused.append(str(exc))
        except StoreUnavailable:
            raise
        except Exception as exc:  # the broker: connection refused, timeout, ...
            logger.warning("dead letter %s not retried: %s", dead_letter_id, exc)
            return retried, refused, f"publishing dead letter {dead_letter_id}: {exc}"
    return retried, refused, None


def _ids(values: list[Any]) -> list[int]:
    return sorted({found for value in values if (found := row_id(str(value), "id")) is not None})


def _query(given: Mapping[str, str]) -> str:
    return "?" + urlencode(given) if given else ""
