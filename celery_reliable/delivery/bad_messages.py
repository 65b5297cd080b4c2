"""Messages that never become an execution: an unknown task name, a body the worker
refuses (a content type not in ``accept_content``, such as pickle) or cannot decode.

Celery logs each as a many-line error with a traceback and drops the message (acks or
rejects it); it stores a FAILURE only for an unknown task, so a caller waiting on the
other two waits on PENDING forever. Under celery_reliable each one first gets a dead
letter (its arguments as JSON when the body can be decoded, so that an unknown task's
job can be re-published with ``dead retry`` once a worker has the task; else the body
as text, for reading), then its FAILURE is stored and one line says what happened and
what to do. Celery's own handling (the ack or reject, its events and signals) runs
after that, as before, without its log record.

Installed by ``wiring.install`` as a consumer bootstep: it replaces the consumer's
three handlers before the event loop builds its message callback from them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from celery import bootsteps
from celery.app.task import Context
from celery.exceptions import NotRegistered
from celery.utils.objects import Bunch
from kombu.exceptions import ContentDisallowed

from celery_reliable.config import as_written, settings_for
from celery_reliable.errors import StoreUnavailable
from celery_reliable.store import store_for
from celery_reliable.store.dead_letters import DeadLetters, queue_of, republish_options
from celery_reliable.store.logged_dead_letters import LOGGED_MARKER

logger = logging.getLogger("celery_reliable.messages")

#: Characters of an undecodable body kept in its dead letter (its ``args``).
MAX_BODY_TEXT = 64 * 1024

_CONSUMER_LOGGER = "celery.worker.consumer.consumer"


class _Undecoded:
    """The arguments of a message whose body was not decoded: kept as this repr (a
    dead letter that cannot be re-published, but can be read)."""

    def __init__(self, message: Any) -> None:
        self.message = message

    def __repr__(self) -> str:
        body = self.message.body
        text = repr(body[:MAX_BODY_TEXT]) if isinstance(body, (bytes, str)) else repr(body)
        more = (
            f"... ({len(body)} in all)"
            if isinstance(body, (bytes, str)) and len(body) > MAX_BODY_TEXT
            else ""
        )
        return f"<undecoded {self.message.content_type} body: {text[:MAX_BODY_TEXT]}{more}>"


class _MuteReported(logging.Filter):
    """Drops Celery's many-line report of a message already reported in one line.

    Only the record with the template being muted, only in the thread muting it (the
    consumer's): any other record of Celery's consumer still gets through.
    """

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        template = getattr(self._local, "template", None)
        return template is None or record.msg is not template

    @contextlib.contextmanager
    def muting(self, template: object) -> Iterator[None]:
        self._local.template = template
        try:
            yield
        finally:
            self._local.template = None


_mute = _MuteReported()
logging.getLogger(_CONSUMER_LOGGER).addFilter(_mute)


def _template(name: str) -> object:
    """One of Celery's log templates for these messages (the record's ``msg``)."""
    from celery.worker.consumer import consumer

    return getattr(consumer, name, None)


class BadMessages(bootsteps.Step):
    """Consumer bootstep: see the module's docstring."""

    name = "celery_reliable bad messages"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        handlers = _Handlers(parent)
        parent.on_unknown_task = handlers.unknown_task
        parent.on_invalid_task = handlers.invalid_task
        parent.on_decode_error = handlers.decode_error


class _Handlers:
    def __init__(self, consumer: Any) -> None:
        self.app = consumer.app
        # Celery's own handlers, run after ours: they ack or reject the message.
        self._unknown: Callable[..., Any] = consumer.on_unknown_task
        self._invalid: Callable[..., Any] = consumer.on_invalid_task
        self._decode_error: Callable[..., Any] = consumer.on_decode_error

    def unknown_task(self, body: Any, message: Any, exc: BaseException) -> None:
        name = _headers(message).get("task")
        reported = self._report(
            message,
            NotRegistered(name),
            what="no task of this name is registered in this worker",
            fix="import its module in the worker (include=, autodiscover_tasks) or fix the "
            "name the publisher uses",
            store_failure=False,  # Celery stores NotRegistered itself
        )
        with _mute.muting(_template("UNKNOWN_TASK_ERROR") if reported else None):
            self._unknown(body, message, exc)

    def invalid_task(self, body: Any, message: Any, exc: BaseException) -> None:
        if isinstance(exc, ContentDisallowed):
            fix = (
                "publish plain JSON data (ids, strings, numbers, lists, dicts) with the json "
                "serializer, or add its content type to accept_content"
            )
        else:  # InvalidTaskError: headers that break Celery's task protocol
            fix = "fix the publisher: the message must follow Celery's task protocol"
        reported = self._report(message, exc, what=f"the message was refused ({exc})", fix=fix)
        with _mute.muting(_template("INVALID_TASK_ERROR") if reported else None):
            self._invalid(body, message, exc)

    def decode_error(self, message: Any, exc: BaseException) -> None:
        reported = self._report(
            message,
            exc,
            what=f"its body cannot be decoded ({exc})",
            fix="fix the publisher: the body must be what its content type says",
        )
        with _mute.muting(_template("MESSAGE_DECODE_ERROR") if reported else None):
            self._decode_error(message, exc)

    def _report(
        self,
        message: Any,
        exc: BaseException,
        *,
        what: str,
        fix: str,
        store_failure: bool = True,
    ) -> bool:
        """Dead letter, FAILURE and one line; False (Celery's report stays) if that
        failed: handling a bad message must never stop the consumer."""
        try:
            headers = _headers(message)
            task_id = str(headers.get("id") or "")
            name = str(headers.get("task") or "?")
            row = self._row(message, headers, task_id=task_id, name=name, exc=exc, what=what)
            kept = self._keep(row)
            if store_failure and task_id:
                self._store_failure(message, headers, task_id, name, exc)
            if not isinstance(kept, int):
                logger.error("task %s[%s]: not run: %s; %s", name, task_id, what, kept)
            elif isinstance(row["args"], _Undecoded):
                logger.error(
                    "task %s[%s]: not run: %s; kept as dead letter %d: %s (the dead letter "
                    "keeps the body for reading; it cannot be re-published)",
                    name,
                    task_id,
                    what,
                    kept,
                    fix,
                )
            else:
                logger.error(
                    "task %s[%s]: not run: %s; kept as dead letter %d: %s, then re-publish "
                    "it: celery -A <app> reliable dead retry %d",
                    name,
                    task_id,
                    what,
                    kept,
                    fix,
                    kept,
                )
            return True
        except Exception:
            logger.exception("celery_reliable: could not keep a bad message; Celery reports it")
            return False

    def _row(
        self,
        message: Any,
        headers: dict[str, Any],
        *,
        task_id: str,
        name: str,
        exc: BaseException,
        what: str,
    ) -> dict[str, Any]:
        args, kwargs = _arguments(message)
        request = Context(headers, delivery_info=message.delivery_info or {})
        options = republish_options(request)
        if options.get("priority") is None:
            options["priority"] = (message.properties or {}).get("priority")
        task = self.app.tasks.get(name)
        redact = bool(getattr(task, "dead_letter_redact", False)) or settings_for(self.app).redacts(
            name
        )
        try:
            attempts = int(headers.get("retries") or 0) + 1
        except (TypeError, ValueError):
            attempts = 1
        return {
            "task_id": task_id,
            "task_name": name,
            "queue": queue_of(options),
            "args": args,
            "kwargs": kwargs,
            "options": options,
            "redact": redact,
            "outcome": "failed",
            "exc_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "exc_message": str(exc),
            "traceback": None,
            "reason": f"not run: {what}",
            "attempts": attempts,
        }

    def _keep(self, row: dict[str, Any]) -> int | str:
        """The dead letter's id; or, when it cannot be stored, the text saying so with
        the whole row (to re-publish it by hand), for the one line."""
        store = store_for(self.app)
        if store is None:
            problem = f"{as_written(self.app, 'reliable_database_url')} is None"
        else:
            try:
                return store.dead_letters.write(**row)
            except StoreUnavailable as error:
                problem = str(error)
        whole = json.dumps(DeadLetters.build_row(**row), default=str)
        return (
            f"its dead letter was not stored ({problem}); `celery reliable dead import` "
            f"reads it back from this line: {LOGGED_MARKER}{whole}"
        )

    def _store_failure(
        self, message: Any, headers: dict[str, Any], task_id: str, name: str, exc: BaseException
    ) -> None:
        # As Celery does for an unknown task: whoever waits on the result hears of it.
        properties = message.properties or {}
        request = Bunch(
            name=name,
            chord=None,
            root_id=headers.get("root_id"),
            correlation_id=properties.get("correlation_id"),
            reply_to=properties.get("reply_to"),
            errbacks=None,
        )
        try:
            self.app.backend.mark_as_failure(task_id, exc, request=request)
        except Exception as error:
            logger.warning("task %s[%s]: could not store its FAILURE: %r", name, task_id, error)


def _headers(message: Any) -> dict[str, Any]:
    headers = getattr(message, "headers", None)
    return dict(headers) if isinstance(headers, dict) else {}


def _arguments(message: Any) -> tuple[Any, Any]:
    """``(args, kwargs)`` of a protocol-2 body, decoded only as the consumer accepts it
    (an untrusted pickle body is never loaded); else the body itself, to be read."""
    try:
        body = message.decode()
    except Exception:
        return _Undecoded(message), None
    if (
        isinstance(body, (list, tuple))
        and len(body) == 3
        and isinstance(body[0], (list, tuple))
        and isinstance(body[1], dict)
    ):
        return list(body[0]), dict(body[1])
    return _Undecoded(message), None
