"""``celery -A proj reliable relay``: the outbox's relay as a process of its own, one line
per event (started, each batch published, the broker or the store lost and back,
stopped), until SIGTERM or Ctrl-C."""

from __future__ import annotations

import signal
import threading
from datetime import datetime, timezone
from typing import Any

import click

from celery_reliable.cli.common import store_of


@click.command("relay")
@click.option(
    "--batch",
    default=100,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="Messages published and deleted per transaction.",
)
@click.pass_context
def relay_command(ctx: click.Context, batch: int) -> None:
    """Publish the outbox's committed messages (publish_in), oldest first, and delete
    each once the broker has it. Workers run a relay too (reliable_outbox_relay); any
    number may run at once: they take turns, in order. Stops at SIGTERM or Ctrl-C,
    after the batch in hand."""
    from celery_reliable.cli import app_of
    from celery_reliable.config import settings_for
    from celery_reliable.outbox.relay import Relay

    app = app_of(ctx)
    store = store_of(ctx)
    relay = Relay(
        app,
        store,
        poll_interval=settings_for(app).outbox_poll_interval,
        report=_line,
        batch=batch,
    )
    stop = threading.Event()

    def asked_to_stop(number: int, _frame: Any) -> None:
        _line(0, f"{signal.Signals(number).name}: stopping")
        stop.set()

    signal.signal(signal.SIGTERM, asked_to_stop)
    signal.signal(signal.SIGINT, asked_to_stop)
    relay.run(stop)


def _line(_level: int, text: str) -> None:
    # Flushed line by line: a supervisor's log shows each event as it happens.
    click.echo(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} {text}")
