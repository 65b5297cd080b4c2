"""An app whose task declares ``retry_on`` but forgot ``base=ReliableTask``: its worker
must refuse to start (``test_worker_start.py``)."""

from __future__ import annotations

import os

from celery import Celery

from celery_reliable import retry_on

app = Celery("ignored", broker=os.environ["RELIABLE_TEST_BROKER"], set_as_current=False)
app.conf.reliable_database_url = None


@app.task(name="ignored.send")
@retry_on(ConnectionError, attempts=3)
def send() -> None:
    raise ConnectionError("would never be retried")
