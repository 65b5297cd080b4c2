"""What the code under test published, and running it: ``assert_enqueued``, ``drain``.

Publishing is observed, not replaced: every message Celery really publishes passes
Celery's ``before_task_publish`` signal, where :class:`Capture` keeps it. Give the test
app a broker that needs no server (``broker_url = "memory://"``); nothing consumes
those messages unless a worker runs. ``drain()`` runs the kept messages one execution
at a time in this thread, the way a worker would (a retry or a snooze re-publishes, and
is kept and run in turn, its wait skipped), until none is left.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from socket import gethostname
from typing import Any

from celery import signals as celery_signals

from celery_reliable.outcomes import Outcome
from celery_reliable.signals import OutcomeEvent, task_outcome

#: The message headers of Celery's task protocol 2; the others are the publisher's own
#: (``apply_async(headers=...)``, ours), which a worker's request has as ``.headers``.
PROTOCOL_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index",
        "retries", "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr",
        "origin", "ignore_result", "replaced_task_nesting", "stamped_headers", "stamps",
        "compression", "chord", "chain", "callbacks", "errbacks",
    }
)  # fmt: skip

#: Executions of one job before ``drain`` calls it a loop.
MAX_EXECUTIONS_PER_JOB = 100


class DrainLoop(AssertionError):
    """A job kept re-publishing itself past ``max_executions``: ``drain`` stops."""


@dataclass(frozen=True)
class Enqueued:
    """One published message."""

    task: str
    id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str | None
    headers: Mapping[str, Any]
    #: Celery's retry count (0 for a first publish).
    retries: int
    #: ETA (ISO text) of a countdown or ETA publish, else None.
    eta: str | None

    def matches(
        self,
        task_name: str,
        args: Any = None,
        kwargs: Mapping[str, Any] | None = None,
        queue: str | None = None,
    ) -> bool:
        return (
            self.task == task_name
            and (args is None or tuple(args) == self.args)
            and (kwargs is None or dict(kwargs) == self.kwargs)
            and (queue is None or queue == self.queue)
        )


@dataclass
class Capture:
    """Messages published while it is on, in publish order."""

    #: The app ``drain`` runs the messages with (None: the live app that has the task).
    app: Any = None
    jobs: list[Enqueued] = field(default_factory=list)
    #: Positions in ``jobs`` of the messages ``drain`` already ran (a retry keeps its
    #: task id, so the id alone does not tell them apart).
    done: set[int] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(
        self,
        sender: Any = None,
        body: Any = None,
        routing_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> None:
        headers = dict(headers or {})
        args, kwargs = _arguments(body)
        job = Enqueued(
            task=str(headers.get("task") or sender),
            id=str(headers.get("id")),
            args=args,
            kwargs=kwargs,
            queue=routing_key or None,
            headers=headers,
            retries=int(headers.get("retries") or 0),
            eta=headers.get("eta"),
        )
        with self._lock:
            self.jobs.append(job)

    def pending(self, queue: str | None = None) -> list[tuple[int, Enqueued]]:
        with self._lock:
            return [
                (n, j)
                for n, j in enumerate(self.jobs)
                if n not in self.done and (queue is None or j.queue == queue)
            ]


def _arguments(body: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(body, (tuple, list)) and len(body) >= 2:  # task protocol 2
        return tuple(body[0] or ()), dict(body[1] or {})
    if isinstance(body, Mapping):  # task protocol 1
        return tuple(body.get("args") or ()), dict(body.get("kwargs") or {})
    return (), {}


_current: Capture | None = None
_current_lock = threading.Lock()


@contextmanager
def capture(app: Any = None) -> Iterator[Capture]:
    """Keep every message published inside the block (the pytest plugin turns this on
    around each test, with its ``reliable_app``). ``drain`` runs them with ``app``."""
    global _current  # noqa: PLW0603 - the capture the module's functions read
    kept = Capture(app=app)
    uid = f"celery_reliable.testing.capture:{id(kept)}"
    celery_signals.before_task_publish.connect(kept, weak=False, dispatch_uid=uid)
    with _current_lock:
        previous, _current = _current, kept
    try:
        yield kept
    finally:
        celery_signals.before_task_publish.disconnect(dispatch_uid=uid)
        with _current_lock:
            _current = previous


def _capture() -> Capture:
    """The capture on; first runs the Django ``on_commit`` callbacks that only the
    test's own transaction holds back (they would have published by now)."""
    from celery_reliable.testing.django import run_on_commit_callbacks

    run_on_commit_callbacks()
    if _current is None:
        raise RuntimeError(
            "nothing is being captured: use the pytest plugin (installed with "
            "celery-reliable) or `with celery_reliable.testing.capture():`"
        )
    return _current


def _name(task: Any) -> str:
    return task if isinstance(task, str) else str(task.name)


def all_enqueued(task: Any = None, queue: str | None = None) -> list[Enqueued]:
    """Every message published so far (of ``task``, to ``queue``), drained or not."""
    jobs = list(_capture().jobs)
    return [
        j
        for j in jobs
        if (task is None or j.task == _name(task)) and (queue is None or j.queue == queue)
    ]


def assert_enqueued(
    task: Any, args: Any = None, kwargs: Mapping[str, Any] | None = None, queue: str | None = None
) -> Enqueued:
    """The message of ``task`` published with these arguments (those given), or an
    ``AssertionError`` listing what was published instead."""
    name = _name(task)
    for job in _capture().jobs:
        if job.matches(name, args, kwargs, queue):
            return job
    wanted = _describe(name, args, kwargs, queue)
    seen = [_describe(j.task, j.args, j.kwargs, j.queue) for j in _capture().jobs]
    raise AssertionError(
        f"not enqueued: {wanted}; enqueued: {', '.join(seen) if seen else 'nothing'}"
    )


def refute_enqueued(
    task: Any, args: Any = None, kwargs: Mapping[str, Any] | None = None, queue: str | None = None
) -> None:
    """``AssertionError`` if a matching message of ``task`` was published."""
    name = _name(task)
    found = [j for j in _capture().jobs if j.matches(name, args, kwargs, queue)]
    if found:
        job = found[0]
        raise AssertionError(
            f"enqueued, but should not be: {_describe(job.task, job.args, job.kwargs, job.queue)}"
        )


def _describe(name: str, args: Any, kwargs: Any, queue: str | None) -> str:
    parts = []
    if args is not None:
        parts.append(", ".join(repr(a) for a in args))
    if kwargs:
        parts.append(", ".join(f"{k}={v!r}" for k, v in kwargs.items()))
    where = f" to {queue!r}" if queue else ""
    return f"{name}({', '.join(parts)}){where}"


def drain(
    queue: str | None = None, *, app: Any = None, max_executions: int = MAX_EXECUTIONS_PER_JOB
) -> dict[str, int]:
    """Run what was published (to ``queue``), and what that publishes in turn (retries,
    snoozes, tasks a task publishes), to completion, waits skipped. Returns the count
    of executions per outcome value (``{"succeeded": 3, "retried": 2}``).

    Each message runs through a worker's tracer in this thread. A job that executes
    more than ``max_executions`` times raises :class:`DrainLoop`.
    """
    from celery_reliable.testing.django import run_on_commit_callbacks

    kept = _capture()
    counts: Counter[str] = Counter()
    runs: Counter[str] = Counter()
    heard: list[Outcome] = []
    thread = threading.get_ident()

    def hear(sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        if event is not None and threading.get_ident() == thread:
            heard.append(event.outcome)

    uid = f"celery_reliable.testing.drain:{id(kept)}"
    task_outcome.connect(hear, weak=False, dispatch_uid=uid)
    try:
        while True:
            run_on_commit_callbacks()
            waiting = kept.pending(queue)
            if not waiting:
                break
            position, job = waiting[0]
            kept.done.add(position)
            runs[job.id] += 1
            if runs[job.id] > max_executions:
                raise DrainLoop(
                    f"{job.task}[{job.id}] ran {max_executions} times and published itself "
                    "again: a retry or snooze that never ends (raise max_executions if it is "
                    "meant to)"
                )
            heard.clear()
            _run(job, app if app is not None else kept.app)
            for outcome in heard:
                counts[outcome.value] += 1
    finally:
        task_outcome.disconnect(dispatch_uid=uid)
    return dict(counts)


def _task_named(name: str, app: Any) -> Any:
    """The task of that name: in ``app`` if given, else in a live app, Celery's default
    app last (a shared task is in every app; the default one has no broker set)."""
    from celery import _state

    if app is not None:
        apps = [app]
    else:
        active = list(_state._get_active_apps())  # type: ignore[attr-defined]
        default = getattr(_state, "default_app", None)
        apps = sorted(active, key=lambda a: a is default)
    for candidate in apps:
        if name in candidate.tasks:
            return candidate.tasks[name]
    raise LookupError(f"drain: no app has a task {name!r}; pass drain(app=...)")


def _run(job: Enqueued, app: Any) -> None:
    from celery.app.trace import build_tracer

    from celery_reliable.config import refuse_a_changed_database_url

    task = _task_named(job.task, app)
    refuse_a_changed_database_url(task.app)
    request = {
        **{k: v for k, v in job.headers.items() if k not in ("eta", "countdown")},
        "id": job.id,
        "task": job.task,
        "retries": job.retries,
        "is_eager": False,
        "hostname": gethostname(),
        "headers": {k: v for k, v in job.headers.items() if k not in PROTOCOL_HEADERS},
        "delivery_info": {"exchange": "", "routing_key": job.queue, "priority": None},
        "args": job.args,
        "kwargs": job.kwargs,
    }
    tracer = build_tracer(task.name, task, app=task.app, hostname=request["hostname"])
    tracer(job.id, list(job.args), job.kwargs, request)
