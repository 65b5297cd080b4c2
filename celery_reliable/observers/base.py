"""What every observer shares: per-app filtering and never raising into a task."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from celery_reliable.signals import OutcomeEvent, execution_started, task_outcome

logger = logging.getLogger("celery_reliable.observers")


class Observer:
    """Subscribe ``on_started`` / ``on_outcome`` for one app's tasks.

    Receivers are connected weakly: the app keeps its observers alive, so a test's
    throw-away app takes its observers with it.
    """

    name = "observer"

    def __init__(self, app: Celery) -> None:
        self.app = app

    def connect(self) -> None:
        # Celery before 5.7 identifies a bound-method receiver by its function alone
        # (``id(target.__func__)``), so every observer's ``_outcome`` would count as
        # the first one's and not be connected: each instance names itself instead.
        uid = f"celery_reliable:{type(self).__qualname__}:{id(self)}"
        if type(self).on_started is not Observer.on_started:
            execution_started.connect(self._started, dispatch_uid=uid)
        if type(self).on_outcome is not Observer.on_outcome:
            task_outcome.connect(self._outcome, dispatch_uid=uid)

    def disconnect(self) -> None:
        uid = f"celery_reliable:{type(self).__qualname__}:{id(self)}"
        execution_started.disconnect(dispatch_uid=uid)
        task_outcome.disconnect(dispatch_uid=uid)

    def _started(self, sender: Any = None, **fields: Any) -> None:
        if sender is None or sender.app is not self.app:
            return
        try:
            self.on_started(sender, **fields)
        except Exception:
            logger.exception("%s observer failed on execution start; the task goes on", self.name)

    def _outcome(self, sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
        if event is None or sender is None or sender.app is not self.app:
            return
        try:
            self.on_outcome(event)
        except Exception:
            logger.exception("%s observer failed on an outcome; the task goes on", self.name)

    def on_started(self, task: Any, **fields: Any) -> None:
        """Override to act when an execution starts."""

    def on_outcome(self, event: OutcomeEvent) -> None:
        """Override to act when an execution ends."""
