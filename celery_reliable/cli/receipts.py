"""``celery -A proj reliable receipts list|show|prune``: idempotency receipts."""

from __future__ import annotations

import click

from celery_reliable.cli.common import as_json, parse_age, store_errors, store_of, table, when


@click.group()
def receipts() -> None:
    """Idempotency receipts."""


@receipts.command("list")
@click.option("--task", "task_name", help="Only this task.")
@click.option("--state", type=click.Choice(["in_progress", "succeeded"]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def list_(
    ctx: click.Context, task_name: str | None, state: str | None, limit: int, as_json_: bool
) -> None:
    """List receipts, most recently updated first."""
    with store_errors():
        rows = store_of(ctx).receipts.list(task_name=task_name, state=state, limit=limit)
    if as_json_:
        as_json(rows)
        return
    table(
        f"receipts ({len(rows)} shown)",
        ["task", "key", "state", "task id", "claims", "lease until", "completed"],
        [
            (
                r.task_name,
                r.key,
                r.state,
                r.task_id,
                r.claims,
                when(r.lease_expires_at),
                when(r.completed_at),
            )
            for r in rows
        ],
    )


@receipts.command()
@click.argument("task_name")
@click.argument("key")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of text.")
@click.pass_context
def show(ctx: click.Context, task_name: str, key: str, as_json_: bool) -> None:
    """One receipt, with its stored result."""
    with store_errors():
        receipt = store_of(ctx).receipts.get(task_name, key)
    if receipt is None:
        raise click.ClickException(f"no receipt for {task_name} / {key!r}")
    if as_json_:
        as_json(receipt)
        return
    for label, value in [
        ("task", receipt.task_name),
        ("key", receipt.key),
        ("state", receipt.state),
        ("task id", receipt.task_id),
        ("claims", receipt.claims),
        ("payload", receipt.payload_hash),
        ("created", when(receipt.created_at)),
        ("lease until", when(receipt.lease_expires_at)),
        ("completed", when(receipt.completed_at)),
        ("result", receipt.result),
    ]:
        click.echo(f"{label:>11}: {value}")


@receipts.command()
@click.option("--older-than", help="Default: reliable_receipt_ttl (30d, 12h, 90s).")
@click.pass_context
def prune(ctx: click.Context, older_than: str | None) -> None:
    """Delete succeeded receipts older than the TTL, and long-abandoned claims."""
    from celery_reliable.cli import app_of
    from celery_reliable.config import settings_for

    ttl = (
        parse_age(older_than).total_seconds()
        if older_than
        else settings_for(app_of(ctx)).receipt_ttl
    )
    with store_errors():
        count = store_of(ctx).receipts.prune(ttl)
    click.echo(f"pruned {count} receipt{'s' if count != 1 else ''} older than {ttl:g}s")
