"""``celery -A proj reliable cancel TASK_ID [--reason TEXT]``: a cancel that holds across
retries and worker restarts (``longrun/cancel.py``), and one line on what becomes of
the job."""

from __future__ import annotations

import click
from celery.exceptions import ImproperlyConfigured

from celery_reliable.cli.common import as_json, store_errors, store_of, when
from celery_reliable.longrun.cancel import cancel_job


@click.command("cancel")
@click.argument("task_id")
@click.option("--reason", default=None, help="Why: kept with the cancel, and in its outcome.")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of text.")
@click.pass_context
def cancel_command(ctx: click.Context, task_id: str, reason: str | None, as_json_: bool) -> None:
    """Cancel job TASK_ID for good: it ends CANCELLED when it would start (retries
    included, on any worker, started now or later), or at its next heartbeat if it runs
    with one. Unlike `celery revoke`, the cancel is kept in the store."""
    from celery_reliable.cli import app_of

    store_of(ctx)  # one line when there is no store, before anything is sent
    try:
        with store_errors():
            done = cancel_job(app_of(ctx), task_id, reason)
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json_:
        as_json(done.to_dict())
        return
    row = done.cancellation
    if done.new:
        line = f"cancelled {task_id}: {done.fate}"
    else:
        line = (
            f"{task_id} was already cancelled ({row.describe()}, {when(row.requested_at)} "
            f"UTC): {done.fate}"
        )
    if done.broadcast_error is not None:
        line += (
            f"; running workers were not told at once (broker: {done.broadcast_error}): "
            "they read the cancel from the store within seconds"
        )
    click.echo(line)
