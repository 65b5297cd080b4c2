"""StatsD metrics around every execution: the names of ``celery_reliable.metrics``.

At start: the ``started`` counter and the ``queue_time`` timer; at the end: the outcome's
counter and the ``duration`` timer; every few seconds, per consumed queue: the depth
gauge, and the outbox's depth and oldest age. Each group goes out as one UDP packet.
The host is resolved once, when the observer is built; the socket is non-blocking and
the ``statsd`` client swallows send errors, so a StatsD that is down costs the packets
and nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import statsd

from celery_reliable import metrics
from celery_reliable.config import ReliableSettings
from celery_reliable.headers import SENT_AT_HEADER
from celery_reliable.observers.base import Observer
from celery_reliable.signals import OutcomeEvent

logger = logging.getLogger("celery_reliable.statsd")


def queue_time_ms(request: Any, now: float | None = None) -> float | None:
    """Milliseconds the message waited: from its publish time, or its due time (ETA,
    countdown) if that is later. None when the publisher did not stamp it."""
    headers = getattr(request, "headers", None) or {}
    sent = headers.get(SENT_AT_HEADER)
    if not isinstance(sent, (int, float)):
        return None
    due = float(sent)
    eta = getattr(request, "eta", None)
    if eta:
        with contextlib.suppress(TypeError, ValueError):
            due = max(due, _epoch(eta))
    return max(((now or time.time()) - due) * 1000.0, 0.0)


def _epoch(eta: Any) -> float:
    when = eta if isinstance(eta, datetime) else datetime.fromisoformat(str(eta))
    if when.tzinfo is None:
        # Celery's naive ETAs are UTC.
        from datetime import timezone

        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def _queue(queue: str | None) -> str:
    # Every tagged line has the same label set (statsd_exporter rejects a metric whose
    # labels vary): an execution with no queue (eager, or reported by the main process)
    # is tagged "unknown".
    return queue or "unknown"


class StatsdObserver(Observer):
    name = "statsd"

    def __init__(self, app: Any, settings: ReliableSettings) -> None:
        super().__init__(app)
        assert settings.statsd_host is not None
        self.client = statsd.StatsClient(settings.statsd_host, settings.statsd_port)
        sock = getattr(self.client, "_sock", None)
        if sock is not None:
            sock.setblocking(False)
        self._send_raw: Callable[[str], None] = self.client._send  # type: ignore[attr-defined]
        self.prefix = settings.statsd_prefix
        self.tagged = settings.statsd_tags == "dogstatsd"
        self._names: dict[str, dict[str, str]] = {}

    def _task_names(self, task_name: str) -> dict[str, str]:
        names = self._names.get(task_name)
        if names is None:
            if self.tagged:
                names = {e: metrics.tagged_task_metric(self.prefix, e) for e in metrics.TASK_EVENTS}
            else:
                names = {
                    e: metrics.task_metric(self.prefix, task_name, e) for e in metrics.TASK_EVENTS
                }
            self._names[task_name] = names
        return names

    def on_started(self, task: Any, **fields: Any) -> None:
        names = self._task_names(task.name)
        waited = queue_time_ms(fields.get("request"))
        if self.tagged:
            tags = metrics.dogstatsd_tags(task=task.name, queue=_queue(fields.get("queue")))
            lines = [f"{names[metrics.STARTED]}:1|c{tags}"]
            if waited is not None:
                lines.append(f"{names[metrics.QUEUE_TIME]}:{waited:.3f}|ms{tags}")
        else:
            lines = [f"{names[metrics.STARTED]}:1|c"]
            if waited is not None:
                lines.append(f"{names[metrics.QUEUE_TIME]}:{waited:.3f}|ms")
        self._send_raw("\n".join(lines))

    def on_outcome(self, event: OutcomeEvent) -> None:
        name = event.task.name
        names = self._task_names(name)
        duration = event.duration
        if self.tagged:
            tags = metrics.dogstatsd_tags(
                task=name, queue=_queue(event.queue), outcome=event.counted_as
            )
            lines = [f"{names[event.counted_as]}:1|c{tags}"]
            if duration is not None:
                lines.append(f"{names[metrics.DURATION]}:{duration * 1000.0:.3f}|ms{tags}")
        else:
            lines = [f"{names[event.counted_as]}:1|c"]
            if duration is not None:
                lines.append(f"{names[metrics.DURATION]}:{duration * 1000.0:.3f}|ms")
        self._send_raw("\n".join(lines))

    def queue_depths(self, depths: Iterable[tuple[str, int]]) -> None:
        if self.tagged:
            name = metrics.tagged_queue_depth_metric(self.prefix)
            lines = [f"{name}:{n}|g{metrics.dogstatsd_tags(queue=q)}" for q, n in depths]
        else:
            lines = [f"{metrics.queue_depth_metric(self.prefix, q)}:{n}|g" for q, n in depths]
        if lines:
            self._send_raw("\n".join(lines))

    def outbox(self, depth: int, oldest_age: float) -> None:
        """The outbox's gauges (the same names in both modes: one outbox per store)."""
        self._send_raw(
            f"{metrics.outbox_metric(self.prefix, metrics.OUTBOX_DEPTH)}:{depth}|g\n"
            f"{metrics.outbox_metric(self.prefix, metrics.OUTBOX_OLDEST_AGE)}:{oldest_age:.1f}|g"
        )
