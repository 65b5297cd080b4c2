"""``base=ReliableTask`` keeps what the app's own task class gives.

A task's base replaces the app's ``task_cls`` (Celery's ``_task_from_fun`` uses the
``base`` given, else ``app.Task``). Django's fixup makes ``task_cls`` Celery's
``DjangoTask`` (``delay_on_commit``, ``apply_async_on_commit``), and projects set a
base of their own (``Celery(task_cls="proj.base:Task")``); with ``base=ReliableTask``
both would vanish. So when a ReliableTask class is instantiated (Celery does it once
per task), the instance is made of ``(TaskClass, AppTaskClass)``: ReliableTask's
methods first, the app class's behind them in the MRO. Done once per task class.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery._state import get_current_app
from celery.exceptions import ImproperlyConfigured
from kombu.utils.imports import symbol_by_name

_COMPOSED_ATTR = "_reliable_composed"


def with_app_task_class(cls: type, reliable_base: type) -> type:
    """``cls`` composed with its app's task class, or ``cls`` when that adds nothing.
    ``reliable_base`` is ReliableTask (passed in: this module is imported by it)."""
    cached = cls.__dict__.get(_COMPOSED_ATTR)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    composed = _compose(cls, reliable_base)
    # Cached on cls itself (not inherited: a subclass has an app of its own).
    type.__setattr__(cls, _COMPOSED_ATTR, composed)
    return composed


def _compose(cls: type, reliable_base: type) -> type:
    app_class = _app_task_class(cls)
    if app_class is None or issubclass(cls, app_class):
        return cls
    namespace: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        # The app class's own __call__ (a context it sets up) runs around the body.
        "_reliable_app_call": _defines_call(app_class, reliable_base),
    }
    try:
        return type(cls.__name__, (cls, app_class), namespace)
    except TypeError as exc:
        raise ImproperlyConfigured(
            f"task {getattr(cls, 'name', None) or cls.__qualname__}: base=ReliableTask "
            f"cannot be combined with the app's task_cls {app_class.__qualname__} ({exc}); "
            f"declare a base of both: class Base(ReliableTask, {app_class.__qualname__}): "
            "pass, and use base=Base"
        ) from exc


def _app_task_class(cls: type) -> type | None:
    """The raw class the app's ``task_cls`` names, unless it is Celery's own ``Task``."""
    app = cls.__dict__.get("app")
    if not isinstance(app, Celery):
        app = getattr(cls, "_app", None)
    if not isinstance(app, Celery):
        app = get_current_app()
    task_cls = app.task_cls
    try:
        resolved = symbol_by_name(task_cls) if isinstance(task_cls, str) else task_cls
    except (ImportError, AttributeError, ValueError):
        return None  # Celery itself reports an app whose task_cls cannot be imported
    if not isinstance(resolved, type) or resolved is Task or not issubclass(resolved, Task):
        return None
    return resolved


def _defines_call(app_class: type, reliable_base: type) -> bool:
    """The app class has a ``__call__`` of its own, between it and Celery's Task."""
    for klass in app_class.__mro__:
        if klass is Task or klass is reliable_base:
            return False
        if "__call__" in klass.__dict__:
            return True
    return False
