"""``celery -A proj reliable pause QUEUE`` / ``pause --task NAME`` / ``pause --list`` and
``resume QUEUE`` / ``resume --task NAME``: a pause kept in the store, seen by every
worker within seconds (``limits/pause.py``), and one line on what happens."""

from __future__ import annotations

import click
from celery.exceptions import ImproperlyConfigured

from celery_reliable.cli.common import as_json, store_errors, store_of, table, when
from celery_reliable.errors import UnknownTask
from celery_reliable.limits.pause import (
    QUEUE,
    TASK,
    held_by_workers,
    pause,
    pauses,
    resume,
    unrouted_queue,
)


def _what(queue: str | None, task: str | None, command: str) -> tuple[str, str]:
    if (queue is None) == (task is None):
        raise click.UsageError(
            f"name a queue (`reliable {command} QUEUE`) or a task (`reliable {command} "
            "--task NAME`), not both"
            if queue is not None
            else f"name a queue (`reliable {command} QUEUE`) or a task (`reliable {command} "
            "--task NAME`)"
        )
    return (QUEUE, queue) if queue is not None else (TASK, str(task))


def _told(error: str | None) -> str:
    if error is None:
        return ""
    return (
        f"; running workers were not told at once (broker: {error}): they read the store "
        "within seconds"
    )


@click.command("pause")
@click.argument("queue", required=False)
@click.option("--task", "task", default=None, metavar="NAME", help="Pause this task instead.")
@click.option("--reason", default=None, help="Why: kept with the pause, shown with it.")
@click.option("--list", "list_", is_flag=True, help="List what is paused, and stop.")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of text.")
@click.pass_context
def pause_command(
    ctx: click.Context,
    queue: str | None,
    task: str | None,
    reason: str | None,
    list_: bool,
    as_json_: bool,
) -> None:
    """Pause QUEUE (no worker consumes it) or --task NAME (no worker starts it) on
    every worker, until `reliable resume`: kept in the store, so it holds across
    restarts and for workers started later. Messages are kept, none lost; running
    jobs go on to their end. --list lists what is paused, and how many messages the
    running workers hold back for each."""
    from celery_reliable.cli import app_of

    if list_:
        if queue is not None or task is not None or reason is not None:
            raise click.UsageError("--list takes no queue, --task or --reason")
        _list(ctx, as_json_)
        return
    kind, name = _what(queue, task, "pause")
    app = app_of(ctx)
    store_of(ctx)  # one line when there is no store, before anything is sent
    try:
        with store_errors():
            done = pause(app, kind, name, reason)
    except (UnknownTask, ImproperlyConfigured, ValueError) as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc
    if kind == QUEUE:
        warning = unrouted_queue(app, name)
        if warning is not None:
            click.echo(warning, err=True)
    if as_json_:
        as_json(done.to_dict())
        return
    row = done.pause
    if done.new:
        line = f"paused {kind} {name}: {done.fate}"
    else:
        by = f" by {row.paused_by}" if row.paused_by else ""
        why = f": {row.reason}" if row.reason else ""
        line = (
            f"{kind} {name} was already paused{by} since {when(row.paused_at)} UTC{why}; "
            "that pause stands"
        )
    click.echo(line + _told(done.broadcast_error))


@click.command("resume")
@click.argument("queue", required=False)
@click.option("--task", "task", default=None, metavar="NAME", help="Resume this task instead.")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of text.")
@click.pass_context
def resume_command(ctx: click.Context, queue: str | None, task: str | None, as_json_: bool) -> None:
    """Resume QUEUE or --task NAME paused with `reliable pause`: every worker takes it
    again within seconds."""
    from celery_reliable.cli import app_of

    kind, name = _what(queue, task, "resume")
    app = app_of(ctx)
    store_of(ctx)
    try:
        with store_errors():
            done = resume(app, kind, name)
    except (UnknownTask, ImproperlyConfigured, ValueError) as exc:
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc
    if as_json_:
        as_json(done.to_dict())
        return
    if done.pause is None:
        click.echo(done.fate)
        return
    was = done.pause
    by = f" by {was.paused_by}" if was.paused_by else ""
    click.echo(
        f"resumed {kind} {name} (paused{by} since {when(was.paused_at)} UTC): {done.fate}"
        + _told(done.broadcast_error)
    )


def _list(ctx: click.Context, as_json_: bool) -> None:
    from celery_reliable.cli import app_of

    app = app_of(ctx)
    store_of(ctx)
    try:
        with store_errors():
            found = pauses(app)
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from exc
    held, unasked = held_by_workers(app) if found else ({}, None)
    if unasked is not None:
        click.echo(f"the workers could not be asked what they hold (broker: {unasked})", err=True)
    if as_json_:
        as_json(
            [
                {**row.to_dict(), "held": None if unasked is not None else held.get(row.key, 0)}
                for row in found
            ]
        )
        return
    if not found:
        click.echo("nothing is paused")
        return
    table(
        "Paused",
        ("kind", "name", "paused at (UTC)", "paused by", "held", "reason"),
        [
            (
                p.kind,
                p.name,
                when(p.paused_at),
                p.paused_by,
                "?" if unasked is not None else held.get(p.key, 0),
                p.reason,
            )
            for p in found
        ],
    )
