"""The web view (extra ``web``): ``create_app(celery_app)`` is an ASGI application.

Serve it with ``celery -A proj reliable web``, or mount it in your own ASGI app::

    Mount("/reliable", app=create_app(celery_app))
"""

from __future__ import annotations

from typing import Any

from celery_reliable.errors import MissingDependency

__all__ = ["create_app"]

#: What the ``web`` extra installs (python-multipart imports as ``multipart``).
_WEB_LIBRARIES = frozenset({"starlette", "jinja2", "multipart", "python_multipart", "anyio"})


def create_app(celery_app: Any, **options: Any) -> Any:
    """See :func:`celery_reliable.web.app.create_app`."""
    try:
        from celery_reliable.web.app import create_app as create
    except ModuleNotFoundError as exc:
        if exc.name not in _WEB_LIBRARIES:
            raise
        raise MissingDependency("the web view", exc.name or "starlette", extra="web") from exc
    return create(celery_app, **options)
