"""The app ``celery -A tests.support.apps.cli reliable ...`` runs in the CLI tests."""

from __future__ import annotations

from celery_reliable import ReliableTask
from tests.support.apps.config import helper_app

app = helper_app("cli_app")


@app.task(base=ReliableTask, name="cli.echo", timeout=10, idempotency_key="echo:{value}")
def echo(value: str) -> str:
    return value
