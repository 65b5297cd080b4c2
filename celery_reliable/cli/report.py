"""``celery -A proj reliable report TASK``: the task's reliability report."""

from __future__ import annotations

import json

import click
from celery.exceptions import ImproperlyConfigured

from celery_reliable.audit.reports import build_report
from celery_reliable.errors import UnknownTask


@click.command(name="report")
@click.argument("task_name", metavar="TASK")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of Markdown.")
@click.pass_context
def report_command(ctx: click.Context, task_name: str, as_json_: bool) -> None:
    """A ReliableTask's reliability report, in Markdown for a pull request.

    Its declarations (queue, limits, idempotency, each rule's delay schedule), its
    gates, and from the store: the last 24 hours' outcomes, dead letters, receipts.
    Exits 1 (after printing the rest) when the store cannot be read.
    """
    from celery_reliable.cli import app_of

    try:
        report = build_report(app_of(ctx), task_name)
    except (UnknownTask, ImproperlyConfigured, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc
    if as_json_:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        click.echo(report.markdown(), nl=False)
    if report.store_error is not None:
        click.echo(f"Error: no figures from the store: {report.store_error}", err=True)
        ctx.exit(1)
