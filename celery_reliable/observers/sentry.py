"""Sentry reports only for the outcomes that need a human.

| outcome | event |
|---|---|
| EXHAUSTED, FAILED | always, level ``error`` |
| DISCARDED, RETRIED | only when the rule says ``report=True``, level ``warning`` |
| CANCELLED, SNOOZED, DUPLICATE, SUCCEEDED | never |

Every RETRIED leaves a breadcrumb in the current scope; and since each execution runs in
a scope (often a process) of its own, the message header also carries the last ten
retries (attempt, time, reason), which every event turns into breadcrumbs: the report
of an EXHAUSTED job shows the retries that led to it.

Events carry the tags ``task``, ``outcome``, ``attempt``, ``queue`` and the fingerprint
(task, exception type), so one task's one error is one Sentry issue however many jobs
hit it.

sentry-sdk's own ``CeleryIntegration`` (on by default when Celery is installed) also
reports every exception that escapes a task body: EXHAUSTED and FAILED would be
reported twice. A global event processor drops any other event about an exception
this observer has reported, so each reported outcome is exactly one event, with or
without the integration (and its logging integration's copy of Celery's error log).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from datetime import datetime, timezone
from typing import Any, Literal, cast

import sentry_sdk
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.utils import event_from_exception

from celery_reliable.observers.base import Observer
from celery_reliable.outcomes import Outcome
from celery_reliable.signals import OutcomeEvent

logger = logging.getLogger("celery_reliable.sentry")

#: Set on an exception once it is reported, so that other reports of it are dropped.
REPORTED = "__celery_reliable_reported__"
#: In the hint of our own events.
HINT = "celery_reliable"

Level = Literal["error", "warning"]
_ALWAYS: dict[Outcome, Level] = {Outcome.EXHAUSTED: "error", Outcome.FAILED: "error"}
_WHEN_ASKED: dict[Outcome, Level] = {Outcome.DISCARDED: "warning", Outcome.RETRIED: "warning"}

_processor_installed = False

#: sentry-sdk 2 takes the client's options (local variables, value lengths) as an
#: argument; 3 reads them from the current client itself.
_PASSES_CLIENT_OPTIONS = "client_options" in inspect.signature(event_from_exception).parameters


def _event_of(exc: BaseException, client: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    info = (type(exc), exc, exc.__traceback__)
    mechanism = {"type": "celery_reliable", "handled": True}
    build: Any = event_from_exception
    if _PASSES_CLIENT_OPTIONS:
        return build(info, client_options=client.options, mechanism=mechanism)  # type: ignore[no-any-return]
    return build(info, mechanism=mechanism)  # type: ignore[no-any-return]


def _drop_second_reports(event: Any, hint: Any) -> Any:
    """Drop an event about an exception we reported, unless it is our own report."""
    if not hint or hint.get(HINT):
        return event
    exc_info = hint.get("exc_info")
    if exc_info and getattr(exc_info[1], REPORTED, False):
        return None
    return event


def _install_processor() -> None:
    global _processor_installed  # noqa: PLW0603 - once per process
    if not _processor_installed:
        sentry_sdk.scope.add_global_event_processor(_drop_second_reports)
        # Our one log line per execution is ERROR for EXHAUSTED/FAILED: the logging
        # integration would make a second event of it.
        ignore_logger("celery_reliable.outcome")
        _processor_installed = True


def _qualified(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def retry_breadcrumbs(request: Any) -> list[dict[str, Any]]:
    """The retries that led here, from the message header: breadcrumbs of earlier
    executions are gone (each ran in its own scope, perhaps its own process)."""
    from celery_reliable.headers import Counters

    history = Counters.from_headers(getattr(request, "headers", None), None, quiet=True).history
    return [
        {
            "category": "celery_reliable",
            "type": "default",
            "level": "info",
            "message": f"attempt {attempt} retried: {reason}",
            "timestamp": datetime.fromtimestamp(at, timezone.utc).isoformat(),
            "data": {"attempt": attempt},
        }
        for attempt, at, reason in history
    ]


class SentryObserver(Observer):
    name = "sentry"

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        _install_processor()

    def on_outcome(self, event: OutcomeEvent) -> None:
        outcome = event.outcome
        name = event.task.name
        level = _ALWAYS.get(outcome)
        if outcome is Outcome.RETRIED:
            sentry_sdk.add_breadcrumb(
                category="celery_reliable",
                message=f"{name} retried: {event.reason}",
                level="info",
                data={"attempt": event.attempt, "retry_in": event.retry_in},
            )
        if level is None and event.report:
            level = _WHEN_ASKED.get(outcome)
        if level is None:
            return
        client = sentry_sdk.get_client()
        if not client.is_active():
            return
        exc = event.exc
        tags = {
            "task": name,
            "outcome": outcome.value,
            "attempt": str(event.attempt),
            "queue": str(event.queue),
        }
        extra = {
            "task_id": event.task_id,
            "reason": event.reason,
            "retry_in": event.retry_in,
        }
        if exc is not None:
            report, hint = _event_of(exc, client)
            fingerprint = [name, _qualified(exc)]
        else:
            report, hint = {"message": f"{name} {outcome.value}: {event.reason}"}, {}
            fingerprint = [name, outcome.value]
        report["level"] = level
        report["breadcrumbs"] = {"values": retry_breadcrumbs(event.request)}
        report["tags"] = {**report.get("tags", {}), **tags}
        report["extra"] = {**report.get("extra", {}), **extra}
        report["fingerprint"] = fingerprint
        hint[HINT] = True
        sentry_sdk.capture_event(cast(Any, report), hint=hint)
        if exc is not None:
            with contextlib.suppress(AttributeError, TypeError):  # a type with __slots__
                setattr(exc, REPORTED, True)
