"""The worker bootstep: validate settings and wire observers when the worker starts.

So that a misspelt ``reliable_*`` setting stops the worker at start-up with a clear
error, instead of surfacing on the first execution.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps

from celery_reliable.config import settings_for
from celery_reliable.wiring import observers_for

logger = logging.getLogger("celery_reliable.worker")


class ReliableWorkerStep(bootsteps.StartStopStep):
    """Added to ``app.steps['worker']`` when the app's first ReliableTask is bound."""

    name = "celery_reliable"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        app = worker.app
        settings_for(app)  # raises ImproperlyConfigured on a bad setting
        observers_for(app)

    def start(self, worker: Any) -> None:
        logger.debug("celery_reliable ready on %s", worker.hostname)

    def stop(self, worker: Any) -> None:
        pass
