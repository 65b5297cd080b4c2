"""``celery -A proj reliable ...``: a Celery sub-command (entry point ``celery.commands``),
so ``-A``, ``--config`` and the rest of Celery's options work as users expect."""

from __future__ import annotations

from typing import Any

import click

from celery_reliable.cli.batch import batch
from celery_reliable.cli.cancel import cancel_command
from celery_reliable.cli.check import check_command
from celery_reliable.cli.db import db
from celery_reliable.cli.dead import dead
from celery_reliable.cli.pause import pause_command, resume_command
from celery_reliable.cli.progress import progress_command
from celery_reliable.cli.receipts import receipts
from celery_reliable.cli.relay import relay_command
from celery_reliable.cli.report import report_command
from celery_reliable.cli.web import web_command


@click.group(name="reliable")
@click.pass_context
def reliable(ctx: click.Context) -> None:
    """Reliability tooling for ReliableTask apps: gates, reports, the store, dead letters,
    batches, progress and cancels of long jobs, pauses of queues and tasks, the outbox's relay,
    the web view."""


def app_of(ctx: click.Context) -> Any:
    """The Celery app of ``celery -A proj``, finalized so every task is built."""
    obj = ctx.find_root().obj
    app = getattr(obj, "app", None)
    if app is None:
        raise click.UsageError("no Celery app: run as `celery -A proj reliable ...`")
    app.loader.import_default_modules()
    app.finalize(auto=True)
    return app


reliable.add_command(batch)
reliable.add_command(cancel_command)
reliable.add_command(check_command)
reliable.add_command(db)
reliable.add_command(dead)
reliable.add_command(pause_command)
reliable.add_command(progress_command)
reliable.add_command(receipts)
reliable.add_command(relay_command)
reliable.add_command(report_command)
reliable.add_command(resume_command)
reliable.add_command(web_command)
