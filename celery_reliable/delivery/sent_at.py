"""Every published task carries its publish time, for the ``queue_time`` metric.

Connected to Celery's ``before_task_publish`` in every process that imports
celery_reliable (``celery_reliable/__init__.py``): the publisher, not the worker,
knows when a message left.
"""

from __future__ import annotations

import time
from typing import Any

from celery import signals as celery_signals

from celery_reliable.headers import SENT_AT_HEADER


def stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """The publish time in the message's headers.

    Tracing tools (sentry-sdk's CeleryIntegration, dd-trace) nest the custom headers in
    a ``headers`` header, which the worker then reads as ``request.headers``
    (celery#4875): the time goes in there too.
    """
    if headers is None:
        return
    now = time.time()
    headers[SENT_AT_HEADER] = now
    nested = headers.get("headers")
    if isinstance(nested, dict):
        nested[SENT_AT_HEADER] = now


celery_signals.before_task_publish.connect(stamp_publish_time, weak=False)
