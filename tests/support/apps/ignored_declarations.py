"""An app whose task declares ``retry_on`` but forgot ``base=ReliableTask``: its worker
must refuse to start (``test_worker_start.py``)."""

from __future__ import annotations

from celery_reliable import retry_on
from tests.support.apps.config import helper_app

app = helper_app("ignored", set_as_current=False, reliable_database_url=None)


@app.task(name="ignored.send")
@retry_on(ConnectionError, attempts=3)
def send() -> None:
    raise ConnectionError("would never be retried")
