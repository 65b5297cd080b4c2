"""``create_app(celery_app)``: the web view as one ASGI application, served by
``celery -A proj reliable web`` or mounted under a prefix in another ASGI app."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from celery_reliable.config import settings_for
from celery_reliable.errors import StoreUnavailable
from celery_reliable.web import batches, dead_letters, gates, overview, pauses, receipts, workers
from celery_reliable.web.common import HERE, render
from celery_reliable.web.security import Credentials, Guard


def create_app(celery_app: Celery, *, credentials: Credentials | None = None) -> Starlette:
    """The web view of ``celery_app``'s store, broker and tasks.

    Credentials come from ``reliable_web_auth`` (may act) and
    ``reliable_web_read_only_auth`` (may look); ``credentials`` overrides both.
    Without any, only loopback clients are served.
    """
    if credentials is None:
        settings = settings_for(celery_app)
        credentials = Credentials(act=settings.web_auth, look=settings.web_read_only_auth)
    routes = [
        Route("/", overview.overview, name="overview"),
        Route("/dead-letters", dead_letters.listing, name="dead_letters"),
        Route("/dead-letters/act", dead_letters.act, methods=["POST"]),
        Route("/dead-letters/{dead_letter_id:int}", dead_letters.detail),
        Route("/batches", batches.listing, name="batches"),
        Route("/batches/{batch_id}", batches.detail),
        Route("/receipts", receipts.receipts, name="receipts"),
        Route("/receipts/release", receipts.release_claim, methods=["POST"]),
        Route("/locks", receipts.locks, name="locks"),
        Route("/locks/release", receipts.release_lock, methods=["POST"]),
        Route("/gates", gates.gates_page, name="gates"),
        Route("/workers", workers.workers_page, name="workers"),
        Route("/workers/cancel", workers.cancel, methods=["POST"]),
        Route("/pauses/pause", pauses.pause_action, methods=["POST"]),
        Route("/pauses/resume", pauses.resume_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, credentials=credentials)],
        exception_handlers={
            HTTPException: _http_error,
            StoreUnavailable: _store_unavailable,
        },
    )
    app.state.celery_app = celery_app
    app.state.depth_read = threading.Lock()
    app.state.backend_read = threading.Lock()
    return app


async def _http_error(request: Request, exc: Any) -> Response:
    if "csrf_token" not in request.state._state:  # refused before the guard let it in
        return Response(f"{exc.detail}\n", status_code=exc.status_code, media_type="text/plain")
    return render(request, "error.html", status_code=exc.status_code, page=None, message=exc.detail)


async def _store_unavailable(request: Request, exc: Any) -> Response:
    return render(
        request,
        "error.html",
        status_code=503,
        page=None,
        message=f"the store is unavailable: {exc}",
    )
