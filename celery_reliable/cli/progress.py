"""``celery -A proj reliable progress [TASK_ID]``: how far running jobs got, from their
last heartbeat (``self.heartbeat(progress=..., **details)``)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table

from celery_reliable.cli.common import as_json, one_line, store_errors, store_of, table, when
from celery_reliable.longrun.progress import stale_after
from celery_reliable.store.progress import Progress
from celery_reliable.store.timeutil import utcnow


def _fraction(row: Progress) -> str:
    return "-" if row.progress is None else f"{row.progress:.0%}"


def _state(app: Any, row: Progress, age: float) -> str:
    limit = stale_after(app, row.task_name)
    if limit is not None and age > limit:
        return f"stale: no beat for {age:.0f}s (its worker may be gone)"
    return "running"


@click.command("progress")
@click.argument("task_id", required=False)
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of text.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10_000))
@click.pass_context
def progress_command(ctx: click.Context, task_id: str | None, as_json_: bool, limit: int) -> None:
    """The last heartbeat of a running job (TASK_ID), or of every running job with one."""
    from celery_reliable.cli import app_of

    store = store_of(ctx)
    app = app_of(ctx)
    now = utcnow()
    with store_errors():
        rows = [store.progress.get(task_id)] if task_id else store.progress.running(limit)
    found = [row for row in rows if row is not None]
    if task_id and not found:
        raise click.ClickException(
            f"no heartbeat recorded for {task_id}: it is not running, it ended, its task has "
            "no heartbeat_timeout, or it has not called self.heartbeat() yet"
        )
    if as_json_:
        described = [_described(app, row, now) for row in found]
        as_json(described[0] if task_id else described)
        return
    if task_id and sys.stdout.isatty():
        _show(app, found[0], now)
        return
    if task_id:
        # Piped: one line, every value whole, for grep, cut and awk.
        click.echo("\t".join(one_line(field) for field in _fields(app, found[0], now)))
        return
    table(
        "Running jobs with a heartbeat",
        ("task id", "task", "progress", "last beat", "state", "worker", "details"),
        [_fields(app, row, now, ago=" ago") for row in found],
    )


def _fields(app: Any, row: Progress, now: Any, ago: str = "") -> tuple[str, ...]:
    """One job's values, as the piped line and the table's row give them."""
    age = row.age(now)
    return (
        row.task_id,
        row.task_name,
        _fraction(row),
        f"{age:.1f}s{ago}",
        _state(app, row, age),
        row.hostname or "-",
        json.dumps(row.details, default=str),
    )


def _described(app: Any, row: Progress, now: Any) -> dict[str, Any]:
    age = row.age(now)
    return {**row.to_dict(), "age": round(age, 3), "state": _state(app, row, age)}


def _show(app: Any, row: Progress, now: Any) -> None:
    console = Console()
    out = Table.grid(padding=(0, 2))
    out.add_column(justify="right", style="bold")
    out.add_column()
    bar: Any = ProgressBar(total=1.0, completed=row.progress or 0.0, width=40)
    out.add_row("task", f"{row.task_name}[{row.task_id}]")
    out.add_row("progress", bar if row.progress is not None else "-")
    out.add_row("", _fraction(row))
    out.add_row("last beat", f"{row.age(now):.1f}s ago ({when(row.beat_at)} UTC)")
    out.add_row("state", _state(app, row, row.age(now)))
    out.add_row("started", f"{when(row.started_at)} UTC")
    out.add_row("worker", f"{row.hostname or '-'} (pid {row.pid})")
    for key, value in row.details.items():
        out.add_row(str(key), json.dumps(value, default=str))
    console.print(out)
