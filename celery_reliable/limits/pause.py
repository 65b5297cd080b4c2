"""Pausing a queue or a task: what ``celery -A proj reliable pause`` / ``resume`` and the
web view's Pause and Resume buttons do, from Python.

:func:`pause` writes the row in the store (``reliable_pauses``), then broadcasts it to
the running workers (the remote-control command ``reliable_pause``); a worker that
missed it (stopped, disconnected, started later) reads it from the store within a few
seconds (``worker/pauses.py``). Then, on every worker:

* a paused queue is no longer consumed: its messages wait in the broker;
* a paused task is not started: a message of it that a worker receives is held back,
  unacknowledged, until the task is resumed (one it holds when it stops goes back to
  the broker);
* what is running goes on to its end; nothing is lost, no attempt is spent, no
  outcome is sent for what waits.

:func:`resume` deletes the row and broadcasts ``reliable_resume``: the workers consume
the queue again, and start the task's messages they held.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from celery_reliable.errors import StoreUnavailable, UnknownTask
from celery_reliable.longrun.cancel import requester
from celery_reliable.store import require_store, store_for
from celery_reliable.store.pauses import KINDS, QUEUE, TASK, Pause

__all__ = [
    "QUEUE",
    "TASK",
    "Pause",
    "Paused",
    "Resumed",
    "held_by_workers",
    "pause",
    "pauses",
    "resume",
    "unrouted_queue",
]


@dataclass(frozen=True)
class Paused:
    """What :func:`pause` did."""

    pause: Pause
    #: False: it was paused before, and that first pause stands.
    new: bool
    #: What happens now, in a phrase.
    fate: str
    #: Why running workers could not be told at once (the broker's error; they read
    #: the store within a few seconds), or None.
    broadcast_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.pause.to_dict(),
            "new": self.new,
            "fate": self.fate,
            "broadcast_error": self.broadcast_error,
        }


@dataclass(frozen=True)
class Resumed:
    """What :func:`resume` did."""

    kind: str
    name: str
    #: The pause it had, or None when it was not paused.
    pause: Pause | None
    fate: str
    broadcast_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "was_paused": self.pause is not None,
            "pause": self.pause.to_dict() if self.pause is not None else None,
            "fate": self.fate,
            "broadcast_error": self.broadcast_error,
        }


def pause(
    app: Any,
    kind: str,
    name: str,
    reason: str | None = None,
    paused_by: str | None = None,
) -> Paused:
    """Pause queue or task ``name`` (``kind``: ``"queue"`` or ``"task"``) on every
    worker, until :func:`resume` (see the module's docstring).

    Raises ``UnknownTask`` for a task the app does not have (or one that is not a
    ReliableTask: only those are held), ``StoreUnavailable`` when the store cannot be
    reached and ``ImproperlyConfigured`` when the app has none: nothing is paused then.
    A broker that cannot be reached is not an error: the workers read the store.
    """
    _check_kind(kind)
    if kind == TASK:
        check_task(app, name)
    store = require_store(app, "pausing")
    row, new = store.pauses.pause(kind, name, reason, paused_by or requester())
    error = _broadcast(
        app,
        "reliable_pause",
        {
            "kind": row.kind,
            "name": row.name,
            "reason": row.reason,
            "paused_by": row.paused_by,
            "paused_at": row.paused_at.isoformat(),
        },
    )
    if kind == QUEUE:
        fate = (
            "no worker takes its messages from now on (those running go on to their end); "
            "they wait in the broker until it is resumed"
        )
    else:
        fate = (
            "no worker starts it from now on (those running go on to their end); its "
            "messages wait, in the broker or held by a worker, until it is resumed"
        )
    return Paused(row, new, fate, error)


def resume(app: Any, kind: str, name: str) -> Resumed:
    """Resume queue or task ``name``: the workers take it again within a few seconds
    (at once when the broadcast reaches them). Raises as :func:`pause` does; resuming
    what is not paused changes nothing."""
    _check_kind(kind)
    store = require_store(app, "resuming")
    was = store.pauses.resume(kind, name)
    if was is None:
        if kind == TASK and name not in app.tasks:
            check_task(app, name)  # a misspelt name: say so rather than "not paused"
        return Resumed(kind, name, None, f"{kind} {name} is not paused: nothing to resume")
    error = _broadcast(app, "reliable_resume", {"kind": kind, "name": name})
    if kind == QUEUE:
        fate = "workers take its messages again"
    else:
        fate = "workers start it again, the messages they held first"
    return Resumed(kind, name, was, fate, error)


def pauses(app: Any) -> list[Pause]:
    """Every pause in force, queues first. Raises as :func:`pause` does."""
    return require_store(app, "listing pauses").pauses.all()


#: Seconds the workers have to say what they hold.
INSPECT_TIMEOUT = 1.0


def held_by_workers(
    app: Any, timeout: float = INSPECT_TIMEOUT
) -> tuple[dict[tuple[str, str], int], str | None]:
    """How many messages the running workers hold back, per pause (``(kind, name)``),
    asked with the remote-control command ``reliable_held`` (workers started with
    ``--without-control`` do not answer); the broker's error instead when it cannot be
    reached."""
    counts: dict[tuple[str, str], int] = {}
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=1)
            replies = app.control.broadcast(
                "reliable_held", reply=True, timeout=timeout, connection=connection
            )
    except Exception as exc:  # a broker that is down: say so, list what the store has
        return counts, str(exc) or type(exc).__name__
    for reply in replies or []:
        for held in reply.values():
            for entry in held if isinstance(held, list) else []:
                pause = entry.get("pause") or {}
                key = (str(pause.get("kind")), str(pause.get("name")))
                counts[key] = counts.get(key, 0) + 1
    return counts, None


def pauses_if_any(app: Any) -> tuple[list[Pause], str | None]:
    """The pauses in force, for a report that must not fail for them (``celery
    reliable check``): none when the app has no store (or an embedded SQLite store that
    was never created), and a line saying why when the store cannot be read."""
    try:
        store = store_for(app)
    except Exception as exc:  # a bad setting: the report says it elsewhere
        return [], f"pauses not read: {exc}"
    if store is None or _never_created(store):
        return [], None
    try:
        return store.pauses.all(), None
    except StoreUnavailable as exc:
        return [], f"pauses not read: the store is unavailable ({exc})"


def _never_created(store: Any) -> bool:
    """A SQLite store whose file does not exist: nothing is paused, and a report does
    not create it."""
    if store.dialect != "sqlite" or store.django_alias is not None:
        return False
    from pathlib import Path

    database = store.engine.url.database
    return bool(database) and database != ":memory:" and not Path(database).exists()


def check_task(app: Any, name: str) -> None:
    """``UnknownTask`` unless ``name`` is one of the app's ReliableTasks."""
    from celery_reliable.task import ReliableTask

    app.finalize(auto=True)
    task = app.tasks.get(name)
    if isinstance(task, ReliableTask):
        return
    if task is not None:
        raise UnknownTask(
            f"task {name!r} is not a ReliableTask: only those are held by a pause "
            "(pause its queue instead)"
        )
    reliable = sorted(n for n, t in app.tasks.items() if isinstance(t, ReliableTask))
    close = difflib.get_close_matches(name, reliable, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownTask(
        f"no task named {name!r}{hint} (the app's ReliableTasks: {', '.join(reliable) or 'none'})"
    )


def routed_queues(app: Any) -> set[str]:
    """The queues the app's tasks are routed to by default (``task_routes``, a task's
    ``queue``, else the default queue), and those declared in ``task_queues``."""
    app.finalize(auto=True)
    found = set(app.amqp.queues.keys())
    router = app.amqp.router
    for name in list(app.tasks):
        if name.startswith(("celery.", "celery_reliable.")):
            continue  # Celery's own and ours (a batch's ending), routed where sent
        try:
            # A router function may look at the arguments: none are given here.
            queue = router.route({}, name, (), {}).get("queue")
        except Exception:
            continue
        queue_name = getattr(queue, "name", queue)
        if isinstance(queue_name, str):
            found.add(queue_name)
    return found


def unrouted_queue(app: Any, name: str) -> str | None:
    """A warning when no task of the app is routed to queue ``name`` and no queue of
    that name is declared (a misspelt name?), else None. A queue can also be named at
    publish time, so this is a warning, not an error."""
    known = routed_queues(app)
    if name in known:
        return None
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"warning: no task of the app is routed to queue {name!r} and no such queue is "
        f"declared{hint}; its known queues: {', '.join(sorted(known)) or 'none'}"
    )


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"a pause is of a queue or a task, not {kind!r}")


def _broadcast(app: Any, command: str, arguments: dict[str, Any]) -> str | None:
    """Tell the running workers at once; the broker's error when it cannot be reached
    (the workers read the store within a few seconds), else None."""
    try:
        with app.connection_for_write() as connection:
            # A broker that is down: one quick retry, not Celery's publish retries.
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=1)
            app.control.broadcast(command, arguments=arguments, connection=connection)
    except Exception as exc:  # the store has the pause: the workers read it there
        return str(exc) or type(exc).__name__
    return None
