"""``celery -A proj reliable dead list|show|retry|purge|import``: the dead-letter store."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import click

from celery_reliable.cli.common import (
    as_json,
    one_line,
    parse_age,
    store_errors,
    store_of,
    table,
    when,
)
from celery_reliable.errors import DeadLetterError
from celery_reliable.store.dead_letters import DeadLetter
from celery_reliable.store.logged_dead_letters import Unreadable, rows_in


@click.group()
def dead() -> None:
    """Dead letters: DISCARDED, EXHAUSTED and FAILED executions."""


@dead.command("list")
@click.option("--task", "task_name", help="Only this task.")
@click.option("--outcome", type=click.Choice(["discarded", "exhausted", "failed"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--pending", is_flag=True, help="Only those not retried yet.")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def list_(
    ctx: click.Context,
    task_name: str | None,
    outcome: str | None,
    limit: int,
    pending: bool,
    as_json_: bool,
) -> None:
    """List dead letters, newest first."""
    with store_errors():
        letters = store_of(ctx).dead_letters.list(
            task_name=task_name, outcome=outcome, limit=limit, include_retried=not pending
        )
    if as_json_:
        as_json(letters)
        return
    table(
        f"dead letters ({len(letters)} shown)",
        ["id", "when", "task", "outcome", "attempts", "reason", "retried as"],
        [
            (
                d.id,
                when(d.created_at),
                d.task_name,
                d.outcome,
                d.attempts,
                d.reason,
                d.retried_task_id or "",
            )
            for d in letters
        ],
    )


@dead.command()
@click.argument("dead_letter_id", type=int)
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of text.")
@click.pass_context
def show(ctx: click.Context, dead_letter_id: int, as_json_: bool) -> None:
    """Everything kept about one dead letter, traceback included."""
    with store_errors():
        letter = store_of(ctx).dead_letters.get(dead_letter_id)
    if letter is None:
        raise click.ClickException(f"no dead letter {dead_letter_id}")
    if as_json_:
        as_json(letter)
        return
    for label, value in [
        ("id", letter.id),
        ("task", f"{letter.task_name}[{letter.task_id}]"),
        ("outcome", letter.outcome),
        ("when", when(letter.created_at)),
        ("attempts", letter.attempts),
        ("reason", letter.reason),
        ("exception", f"{letter.exc_type}: {letter.exc_message}"),
        ("queue", letter.queue),
        ("args", _shown(letter, letter.args, letter.args_repr)),
        ("kwargs", _shown(letter, letter.kwargs, letter.kwargs_repr)),
        *([("retry of", f"dead letter {letter.retry_of}")] if letter.retry_of else []),
        (
            "retried",
            f"{when(letter.retried_at)} as {letter.retried_task_id}" if letter.retried_at else "no",
        ),
    ]:
        click.echo(f"{label:>10}: {value}")
    _history(letter)
    if letter.traceback:
        click.echo("\n" + letter.traceback.rstrip())


def _history(letter: DeadLetter) -> None:
    """The retries that led to the dead letter, as the web view and ``--json`` show
    them: one line each, the reason whole (a pipe's reader greps it)."""
    history = letter.options.get("retry_history") or []
    if not history:
        why = (
            "it ended on its first execution"
            if letter.attempts <= 1
            else "its messages carried no history"
        )
        click.echo(f"retries before this: none ({why})")
        return
    click.echo("retries before this (from the message's reliable header):")
    for attempt, at, reason in history:
        moment = (
            when(datetime.fromtimestamp(at, timezone.utc).replace(tzinfo=None))
            if isinstance(at, (int, float))
            else "-"
        )
        click.echo(f"  attempt {attempt}  {moment}  {one_line(str(reason))}")


def _shown(letter: DeadLetter, value: Any, text: str | None) -> Any:
    if letter.redacted:
        return "(redacted)"
    # Arguments JSON could not hold are kept as text: shown, marked as such.
    return value if text is None else f"{text} (not JSON: cannot be re-published)"


@dead.command()
@click.argument("dead_letter_ids", type=int, nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Retry rows that were retried already.")
@click.pass_context
def retry(ctx: click.Context, dead_letter_ids: tuple[int, ...], force: bool) -> None:
    """Publish dead letters again, with a fresh attempt budget."""
    store = store_of(ctx)
    failed = 0
    for dead_letter_id in dead_letter_ids:
        try:
            with store_errors():
                result = store.dead_letters.retry(dead_letter_id, force=force)
        except DeadLetterError as exc:
            click.echo(f"{dead_letter_id}: not retried: {exc}", err=True)
            failed += 1
            continue
        click.echo(f"{dead_letter_id}: retried as task {result.id}")
    if failed:
        raise click.exceptions.Exit(1)


@dead.command()
@click.argument("dead_letter_ids", type=int, nargs=-1)
@click.option("--task", "task_name", help="Only this task.")
@click.option("--older-than", help="Only older than this (30d, 12h, 90s).")
@click.option("--retried", is_flag=True, help="Only those already retried.")
@click.option("--all", "everything", is_flag=True, help="Allow purging with no filter.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@click.pass_context
def purge(
    ctx: click.Context,
    dead_letter_ids: tuple[int, ...],
    task_name: str | None,
    older_than: str | None,
    retried: bool,
    everything: bool,
    yes: bool,
) -> None:
    """Delete dead letters matching every filter given."""
    if not (dead_letter_ids or task_name or older_than or retried or everything):
        raise click.UsageError("give ids or a filter (--task, --older-than, --retried), or --all")
    ids = dead_letter_ids or None
    age = parse_age(older_than) if older_than else None
    letters = store_of(ctx).dead_letters
    if not yes:
        with store_errors():
            matching = letters.count_matching(ids, task_name, age, retried)
        if not matching:
            click.echo("no dead letter matches: nothing to purge")
            return
        click.confirm(f"Delete {matching} dead letter{'s' if matching != 1 else ''}?", abort=True)
    with store_errors():
        count = letters.purge(ids, task_name, age, retried)
    click.echo(f"purged {count} dead letter{'s' if count != 1 else ''}")


@dead.command("import")
@click.argument("logs", type=click.File("r", encoding="utf-8", errors="replace"), nargs=-1)
@click.pass_context
def import_(ctx: click.Context, logs: tuple[Any, ...]) -> None:
    """Store the dead letters a worker logged while the store was down.

    LOGS: worker log files (``-`` reads standard input). Only the lines holding a
    dead letter are read; one already stored is not stored twice.
    """
    if not logs:
        raise click.UsageError("name a log file, or - for standard input")
    rows: list[dict[str, Any]] = []
    unreadable: list[str] = []
    for log in logs:
        for found in rows_in(log):
            if isinstance(found, Unreadable):
                unreadable.append(f"{log.name}:{found.line}: {found.why}")
            else:
                rows.append(found)
    for line in unreadable:
        click.echo(f"not imported: {line}", err=True)
    store = store_of(ctx)
    with store_errors():
        ids, present = store.dead_letters.import_rows(rows)
    stored = f"ids {ids[0]}..{ids[-1]}" if len(ids) > 1 else f"id {ids[0]}" if ids else ""
    click.echo(
        f"{len(ids)} dead letters imported{f' ({stored})' if stored else ''}, "
        f"{present} already stored, {len(unreadable)} lines not understood"
    )
    if unreadable:
        raise click.exceptions.Exit(1)
