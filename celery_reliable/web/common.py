"""What every page shares: the templates, the app and store of a request, the checks an
action's form passes, and the one-line notice shown after an action."""

from __future__ import annotations

import re
import urllib.parse
from datetime import datetime
from pathlib import Path
from typing import Any

from celery import Celery
from markupsafe import Markup, escape
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from celery_reliable.store import Store, store_for
from celery_reliable.web.security import ACT, CSRF_FIELD, basic_user, csrf_matches, same_origin

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))

NOTICE_COOKIE = "reliable_notice"

#: Rows per page of every listing.
PAGE_ROWS = 50
#: Listings count the rows they match up to this many, and show "10,000+" beyond: an
#: exact count would read every row on each page load.
COUNT_CAP = 10_000


def when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def capped(count: int) -> str:
    """A count read with ``cap=COUNT_CAP``: "10,000+" when it went past the cap."""
    return f"{COUNT_CAP:,}+" if count > COUNT_CAP else str(count)


SEPARATOR = re.compile(r"([._])")


def breakable(name: str) -> Markup:
    """A task name that a narrow column may fold after each ``.`` and ``_`` (``<wbr>``)
    and nowhere else: ``shop.tasks.`` / ``send_order_`` / ``confirmation``, never
    ``send_ord`` / ``er``. The stylesheet keeps every other break out (``.name``)."""
    return Markup(SEPARATOR.sub(r"\1<wbr>", str(escape(name))))


templates.env.filters["when"] = when
templates.env.filters["capped"] = capped
templates.env.filters["breakable"] = breakable


def celery_app(request: Request) -> Celery:
    app: Celery = request.app.state.celery_app
    return app


def store(request: Request) -> Store:
    """The app's store, or a 503 page saying why there is none."""
    found = store_for(celery_app(request))
    if found is None:
        raise HTTPException(503, "reliable_database_url is None: there is no store to show")
    return found


def base(request: Request) -> str:
    """The prefix the view is mounted under ("" when served alone)."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    notice = request.cookies.get(NOTICE_COOKIE)
    response = templates.TemplateResponse(
        request,
        template,
        {
            "base": base(request),
            "can_act": request.state.role == ACT,
            "csrf_token": request.state.csrf_token,
            "csrf_field": CSRF_FIELD,
            "notice": urllib.parse.unquote(notice) if notice else None,
            **context,
        },
        status_code=status_code,
    )
    if notice:
        response.delete_cookie(NOTICE_COOKIE, path=base(request) or "/")
    return response


async def action_form(request: Request) -> FormData:
    """The form of a state-changing POST, after its checks: the role may act, the
    CSRF token is the cookie's, and the browser's ``Origin`` (if sent) is this host."""
    form = await request.form()
    if request.state.role != ACT:
        raise HTTPException(403, "read-only credentials: this user may look but not act")
    if not csrf_matches(form.get(CSRF_FIELD), request.state.csrf_token):
        raise HTTPException(
            403, "CSRF token missing or wrong: reload the page and submit the form again"
        )
    if not same_origin(request.headers):
        raise HTTPException(403, "cross-origin form refused: submit it from the web view")
    return form


def caller(request: Request) -> str:
    """Who acts, as an action records it: ``web:alice`` (the basic-auth user), or
    ``web:localhost`` when the view needs no credentials (loopback only)."""
    return f"web:{basic_user(request.headers.get('authorization')) or 'localhost'}"


def done(request: Request, path: str, notice: str) -> Response:
    """After an action: back to a listing (303: a reload does not repeat it), with a
    one-line notice of what was done."""
    response = RedirectResponse(base(request) + path, status_code=303)
    response.set_cookie(
        NOTICE_COOKIE,
        urllib.parse.quote(notice),
        max_age=60,
        path=base(request) or "/",
        httponly=True,
        samesite="strict",
    )
    return response


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"
