"""Pauses in a worker's main process: a paused queue is not consumed, a paused task is
not started; their messages are kept (in the broker, or unacknowledged in the worker's
memory), none lost, no attempt spent.

* :class:`PauseWatch` (started by the bootstep) loads every pause before the consumer
  starts (a paused queue is taken out of the queues it will consume), reads every row
  again every few seconds in a thread of its own (``worker/watch.py``), and in the
  worker's timer (the event loop, on prefork) makes the worker do what the rows say:
  stops consuming a queue newly paused (``consumer.cancel_task_queue``, as ``celery
  control cancel_consumer`` does), consumes again a queue it stopped once the queue is
  resumed (``add_task_queue``; never one the worker was not consuming), and releases
  the requests it held back whose queue or task was resumed.
* :func:`reliable_pause` and :func:`reliable_resume`, remote-control commands of ours,
  which ``celery reliable pause`` / ``resume`` and the web view broadcast after writing
  the row: a running worker acts at once; the rows are for one that missed it.
* :class:`PausableRequest` (``ReliableTask.Request``): a request of a paused task, or of
  a paused queue (a message the worker had already received when the pause came), is
  held back when the worker would start it (received, its countdown or ETA run out):
  it stays among the worker's reserved requests (``celery inspect reserved`` lists it),
  its message unacknowledged, and the worker's prefetch limit is raised by one for it,
  as Celery does for a message with an ETA, so that it does not stop the worker from
  taking other messages. It starts, on this worker, once resumed. Nothing ran: no
  outcome is sent, no attempt is spent. A worker that stops (or loses its broker
  connection) gives the held messages back to the broker, unacknowledged as they are,
  and whoever receives them next holds them too while the pause lasts.

A request belongs to a queue by the routing key its message was sent with: the queue's
name, or the ``routing_key`` of a queue declared in ``task_queues``.

Only the main process needs this: prefork children never see a message before the main
process sends it to them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from time import monotonic
from typing import TYPE_CHECKING, Any

from celery.worker import state as worker_state
from celery.worker.control import control_command, inspect_command

from celery_reliable.errors import StoreUnavailable
from celery_reliable.store.pauses import QUEUE, TASK, Pause
from celery_reliable.store.timeutil import utcnow
from celery_reliable.worker.cancels import CancellableRequest
from celery_reliable.worker.watch import StoreReader

if TYPE_CHECKING:
    from celery_reliable.store import Store

logger = logging.getLogger("celery_reliable.pause")


@dataclass(frozen=True)
class _Told:
    """A pause or resume a broadcast told this worker, and when: a read of the store
    that started before it may not have seen it yet, and does not undo it."""

    pause: Pause | None
    at: float


class KnownPauses:
    """The pauses this process knows, in the shapes its hot path reads."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Pause] = {}
        self.tasks: frozenset[str] = frozenset()
        #: The paused queues' names.
        self.queues: frozenset[str] = frozenset()
        #: Routing key -> the paused queue its messages come from.
        self.routing_keys: dict[str, str] = {}
        self._told: dict[tuple[str, str], _Told] = {}
        self._app: Any = None

    @property
    def any(self) -> bool:
        return bool(self.rows)

    def bind(self, app: Any) -> None:
        """The app whose queues map routing keys to queue names."""
        self._app = app

    def from_store(self, rows: list[Pause], started: float) -> None:
        """The store's rows, read from ``started`` (``monotonic()``) on: a pause or
        resume told after that stands over them until a later read sees it."""
        found = {row.key: row for row in rows}
        for key, told in list(self._told.items()):
            if started >= told.at:
                del self._told[key]  # this read started after it: it saw it
            elif told.pause is None:
                found.pop(key, None)
            else:
                found.setdefault(key, told.pause)
        self._set(found)

    def forget(self) -> None:
        self._told.clear()
        self._set({})

    def told(self, key: tuple[str, str], pause: Pause | None) -> None:
        """A broadcast: ``key`` is paused (``pause``), or resumed (None)."""
        self._told[key] = _Told(pause, monotonic())
        found = dict(self.rows)
        if pause is None:
            found.pop(key, None)
        else:
            found[key] = pause
        self._set(found)

    def _set(self, found: dict[tuple[str, str], Pause]) -> None:
        self.rows = found
        self.tasks = frozenset(name for kind, name in found if kind == TASK)
        self.queues = frozenset(name for kind, name in found if kind == QUEUE)
        keys = {}
        declared = getattr(getattr(self._app, "amqp", None), "queues", None) or {}
        for name in sorted(self.queues):
            keys[name] = name
            declared_queue = declared.get(name) if name in declared else None
            routing_key = getattr(declared_queue, "routing_key", None)
            if routing_key:
                keys[routing_key] = name
        self.routing_keys = keys

    def why(self, request: Any) -> Pause | None:
        """The pause that holds ``request`` back, or None."""
        pause = self.rows.get((TASK, request.name)) if request.name in self.tasks else None
        if pause is not None or not self.routing_keys:
            return pause
        routing_key = (request.delivery_info or {}).get("routing_key")
        queue = self.routing_keys.get(routing_key) if routing_key else None
        return self.rows.get((QUEUE, queue)) if queue is not None else None


#: What this process knows (the worker's main process).
_known = KnownPauses()


@dataclass
class _Held:
    request: Any
    #: The consumer's QoS whose prefetch limit was raised for it (None: not raised).
    qos: Any
    pause: Pause


@dataclass
class _Here:
    """This process's running watch (for the requests and the remote-control
    commands), and the requests it holds back, by ``id()`` (two deliveries of one task
    id are two)."""

    watch: PauseWatch | None = None
    held: dict[int, _Held] = field(default_factory=dict)


_here = _Here()


def _pause_from(
    kind: str,
    name: str,
    reason: str | None,
    paused_by: str | None,
    paused_at: str | None,
) -> Pause:
    try:
        when = datetime.fromisoformat(paused_at) if paused_at else utcnow()
    except ValueError:
        when = utcnow()
    return Pause(kind, name, reason or None, paused_by or None, when)


def _act_soon(state: Any) -> None:
    """Apply what the worker now knows in its event loop, soon."""
    watch = _here.watch
    consumer = getattr(state, "consumer", None)
    if watch is None:
        return
    if consumer is not None and hasattr(consumer, "call_soon"):
        consumer.call_soon(watch.enforce)
    else:
        watch.enforce()


@control_command(
    args=[
        ("kind", str),
        ("name", str),
        ("reason", str),
        ("paused_by", str),
        ("paused_at", str),
    ],
    signature="<kind> <name> [reason [paused_by [paused_at]]]",
)
def reliable_pause(
    state: Any,
    kind: str,
    name: str,
    *,
    reason: str | None = None,
    paused_by: str | None = None,
    paused_at: str | None = None,
    **kwargs: Any,
) -> dict[str, str]:
    """Queue or task ``name`` was paused (``celery reliable pause``): not started from
    now on."""
    if kind not in (QUEUE, TASK):
        return {"error": f"a pause is of a queue or a task, not {kind!r}"}
    _known.told((kind, name), _pause_from(kind, name, reason, paused_by, paused_at))
    _act_soon(state)
    logger.info("celery_reliable: %s %s paused", kind, name)
    return {"ok": f"{kind} {name} paused"}  # Celery's reply shape (control.ok)


@control_command(args=[("kind", str), ("name", str)], signature="<kind> <name>")
def reliable_resume(state: Any, kind: str, name: str, **kwargs: Any) -> dict[str, str]:
    """Queue or task ``name`` was resumed (``celery reliable resume``)."""
    if kind not in (QUEUE, TASK):
        return {"error": f"a pause is of a queue or a task, not {kind!r}"}
    _known.told((kind, name), None)
    _act_soon(state)
    logger.info("celery_reliable: %s %s resumed", kind, name)
    return {"ok": f"{kind} {name} resumed"}


class PauseWatch:
    """Makes one worker do what the store's pauses say (see the module's docstring)."""

    def __init__(self, store: Store, worker: Any) -> None:
        self.store = store
        self.worker = worker
        self.app = worker.app
        #: The queues this watch took out of the consumer's: consumed again on resume.
        self._stopped: set[str] = set()
        self._reader = StoreReader("pauses", self.read, self.apply, logger=logger)

    @property
    def consumer(self) -> Any:
        return getattr(self.worker, "consumer", None)

    def start(self, timer: Any) -> None:
        """Load every pause now, before the consumer starts: a paused queue is taken
        out of those it will consume. Then keep reading."""
        _known.bind(self.app)
        try:
            started = monotonic()
            _known.from_store(self.store.pauses.all(), started)
        except StoreUnavailable as exc:
            self._reader.failed_at_start()
            logger.error(
                "celery_reliable: pauses not loaded at start-up (%s): read once the store "
                "is back; until then nothing is paused on this worker",
                exc,
            )
        queues = self.app.amqp.queues
        consuming = set(queues.consume_from or queues)
        for name in sorted(_known.queues & consuming):
            queues.deselect(name)
            self._stopped.add(name)
            logger.warning(
                "celery_reliable: queue %s is paused (%s): not consumed until `celery "
                "reliable resume %s`",
                name,
                _known.rows[(QUEUE, name)].describe(),
                name,
            )
        for name in sorted(_known.tasks):
            logger.warning(
                "celery_reliable: task %s is paused (%s): not started until `celery "
                "reliable resume --task %s`",
                name,
                _known.rows[(TASK, name)].describe(),
                name,
            )
        _here.watch = self
        self._reader.start(timer)

    def stop(self) -> None:
        self._reader.stop()
        if _here.watch is self:
            _here.watch = None
            # The held messages go back to the broker with the connection; an embedded
            # worker started next in this process starts from the store again.
            _here.held.clear()
            _known.forget()

    def read(self) -> tuple[float, list[Pause]]:
        """In the reading thread: every pause, and when the read started."""
        started = monotonic()
        return started, self.store.pauses.all()

    def apply(self, found: list[tuple[float, list[Pause]]]) -> None:
        """In the worker's timer: the newest read becomes what this worker knows;
        then the worker does what it says."""
        if found:
            started, rows = found[-1]
            before = _known.rows
            _known.from_store(rows, started)
            if _known.rows != before:
                logger.info("celery_reliable: paused now (read from the store): %s", _listed())
        self.enforce()

    def enforce(self) -> None:
        """In the worker's event loop: consume no paused queue, consume again the
        queues resumed, start the held requests resumed (or cancelled, or expired)."""
        self._queues()
        if _here.held:
            self._release()

    def _queues(self) -> None:
        consumer = self.consumer
        task_consumer = getattr(consumer, "task_consumer", None)
        if task_consumer is None:  # not connected (yet, or again): next time
            return
        consumed = {queue.name for queue in task_consumer.queues}
        for name in sorted(_known.queues):
            if name in consumed or task_consumer.consuming_from(name):
                try:
                    consumer.cancel_task_queue(name)
                except Exception:  # a connection being lost: the next tick tries again
                    logger.exception("celery_reliable: queue %s not paused", name)
                    continue
                self._stopped.add(name)
                logger.warning(
                    "celery_reliable: queue %s paused: no longer consumed (its messages "
                    "wait in the broker)",
                    name,
                )
        for name in sorted(self._stopped - _known.queues):
            try:
                consumer.add_task_queue(name)
            except Exception:
                logger.exception("celery_reliable: queue %s not resumed", name)
                continue
            self._stopped.discard(name)
            logger.warning("celery_reliable: queue %s resumed: consumed again", name)

    def _release(self) -> None:
        consumer = self.consumer
        for key, held in list(_here.held.items()):
            request = held.request
            if _known.why(request) is not None and not _ends_anyway(request):
                continue
            del _here.held[key]
            qos = getattr(consumer, "qos", None)
            try:
                if request not in worker_state.reserved_requests:
                    # The connection was lost meanwhile: Celery forgot the request, and
                    # the broker gives its message back (to this worker or another).
                    continue
                logger.info(
                    "celery_reliable: %s[%s] resumed: starting it", request.name, request.id
                )
                consumer.on_task_request(request)
            finally:
                # (A new connection has a QoS of its own, which never counted it.)
                if held.qos is not None and held.qos is qos:
                    qos.decrement_eventually()


def _listed() -> str:
    return ", ".join(f"{kind} {name}" for kind, name in sorted(_known.rows)) or "nothing"


def _ends_anyway(request: Any) -> bool:
    """A held request that was cancelled or revoked, or whose ``expires`` passed: let
    Celery end it as it would when it starts (it never runs)."""
    if request.id in worker_state.revoked:
        return True
    try:
        return bool(request.maybe_expire())
    except Exception:  # an expiry that cannot be read: Celery says so when it starts
        return False


def _hold(request: Any, pause: Pause) -> None:
    consumer = _here.watch.consumer if _here.watch is not None else None
    qos = getattr(consumer, "qos", None)
    if qos is not None:
        # As Celery does for a message with an ETA: held, it does not count against
        # the prefetch limit, so the worker goes on taking other messages.
        qos.increment_eventually()
    _here.held[id(request)] = _Held(request, qos, pause)
    logger.info(
        "Holding paused task: %s[%s] (%s): it starts once resumed",
        request.name,
        request.id,
        pause.describe(),
    )


@inspect_command()
def reliable_held(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The requests this worker holds back because of a pause, each one's id, task name
    and pause (``celery reliable pause --list`` counts them)."""
    return [
        {"id": held.request.id, "name": held.request.name, "pause": held.pause.to_dict()}
        for held in list(_here.held.values())
    ]


class PausableRequest(CancellableRequest):
    """``ReliableTask.Request``: a cancellable request (``worker/cancels.py``) that a
    pause holds back (see the module's docstring).

    Celery calls ``revoked()`` first when it would start a request (in
    ``execute_using_pool``), and raises ``TaskRevokedError`` when it says True: the
    worker then releases the pool slot it had taken for it and moves on, which is all
    a held request needs. At receipt Celery calls it too, for a revoked or expiring
    message only; the request is not among the reserved ones yet then, and nothing is
    held. With nothing paused the override costs one attribute read.
    """

    def revoked(self) -> bool:
        if super().revoked():
            return True
        if not _known.any:
            return False
        pause = _known.why(self)
        if pause is None or self not in worker_state.reserved_requests:
            return False
        _hold(self, pause)
        return True
