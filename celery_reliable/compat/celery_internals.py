"""The few Celery internals celery_reliable needs, looked up once, in one place.

Everything else goes through Celery's public API (Task, signals, bootsteps). What is
here moves between Celery minor versions; the version matrix (``make compat``) runs
the suite on 5.4, 5.5, 5.6 and 5.7 so that a move shows up as a failing test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task, _state

__all__ = [
    "actual_ignore_result",
    "task_stack",
    "time_limits",
    "tracer_reads_request_ignore_result",
]

#: The stack behind ``celery.current_task`` (a ``LocalStack``; the tracer pushes the
#: running task on it). Unchanged from Celery 3 to 5.7; not in the type stubs.
task_stack: Any = getattr(_state, "_task_stack")  # noqa: B009


def _task_ignore_result(task: Task, request: Any) -> bool:  # type: ignore[type-arg]
    # Celery 5.4 and 5.5: the tracer reads only the task's option; the result
    # backend itself honours a request's ignore_result (its _is_request_ignore_result).
    return bool(task.ignore_result)


def _lookup_actual_ignore_result() -> Callable[[Any, Any], bool]:
    """Celery's rule for "is this execution's result ignored" (request overrides task).

    In ``celery.app.task`` since 5.7, ``celery.app.trace`` in 5.6, absent before.
    """
    from celery.app import task as task_module
    from celery.app import trace as trace_module

    for module in (task_module, trace_module):
        found = getattr(module, "get_actual_ignore_result", None)
        if callable(found):
            return found  # type: ignore[no-any-return]
    return _task_ignore_result


#: ``actual_ignore_result(task, request) -> bool``, as this Celery's tracer decides it.
actual_ignore_result: Callable[[Any, Any], bool] = _lookup_actual_ignore_result()

#: Celery 5.6+: the tracer stores no RETRY or FAILURE for a request whose
#: ``ignore_result`` is set (5.4 and 5.5 read only the task's option there).
tracer_reads_request_ignore_result: bool = actual_ignore_result is not _task_ignore_result


def time_limits(task: Any, app: Any) -> tuple[float | None, float | None]:
    """``(soft, hard)`` seconds the worker enforces for ``task``: its own options, else
    the app's ``task_soft_time_limit`` / ``task_time_limit``.

    Celery 5.7 copies the app's limits onto the task when it binds it; 5.4 to 5.6 do
    not (their worker reads the setting itself), so there the task's attributes alone
    would say "no limit" for a limit set app-wide.
    """
    conf = app.conf
    soft = task.soft_time_limit or conf.get("task_soft_time_limit")
    hard = task.time_limit or conf.get("task_time_limit")
    return (float(soft) if soft else None, float(hard) if hard else None)
