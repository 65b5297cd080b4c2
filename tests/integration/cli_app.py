"""The app ``celery -A tests.integration.cli_app reliable ...`` runs in the CLI tests."""

from __future__ import annotations

import os

from celery import Celery

from celery_reliable import ReliableTask

app = Celery(
    "cli_app",
    broker=os.environ["RELIABLE_TEST_BROKER"],
    backend=os.environ["RELIABLE_TEST_BROKER"],
)
app.conf.reliable_database_url = os.environ["RELIABLE_TEST_STORE"]


@app.task(base=ReliableTask, name="cli.echo", timeout=10, idempotency_key="echo:{value}")
def echo(value: str) -> str:
    return value
