"""``celery -A proj reliable batch list|show ID``: batches and their members."""

from __future__ import annotations

from dataclasses import asdict

import click

from celery_reliable.cli.common import as_json, store_errors, store_of, table, when
from celery_reliable.store.batches import ABANDONED, COMPLETED, ENDINGS, OPEN, SEALED, BatchRow


@click.group()
def batch() -> None:
    """Batches (celery_reliable.Batch): progress and outcomes."""


def _progress(row: BatchRow) -> str:
    total = "?" if row.total is None else str(row.total)
    return f"{row.done}/{total}"


def _outcomes(row: BatchRow) -> str:
    return ", ".join(f"{n} {outcome}" for outcome, n in row.outcomes.items() if n) or "-"


@batch.command("list")
@click.option("--state", type=click.Choice([OPEN, SEALED, COMPLETED, ABANDONED]))
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def list_(ctx: click.Context, state: str | None, limit: int, as_json_: bool) -> None:
    """List batches, newest first."""
    with store_errors():
        rows = store_of(ctx).batches.recent(state=state, limit=limit)
    if as_json_:
        as_json(rows)
        return
    table(
        f"batches ({len(rows)} shown)",
        ["id", "state", "done", "outcomes", "description", "created", "completed"],
        [
            (
                r.id,
                r.state,
                _progress(r),
                _outcomes(r),
                r.description or "",
                when(r.created_at),
                when(r.completed_at),
            )
            for r in rows
        ],
    )


@batch.command()
@click.argument("batch_id")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of text.")
@click.pass_context
def show(ctx: click.Context, batch_id: str, as_json_: bool) -> None:
    """One batch: its counts, callbacks, and each member with its outcome (pending: not
    ended yet)."""
    with store_errors():
        store = store_of(ctx)
        row = store.batches.get(batch_id)
        members = store.batches.members(batch_id) if row is not None else []
    if row is None:
        raise click.ClickException(f"no batch {batch_id!r}")
    if as_json_:
        as_json(
            {
                "batch": asdict(row),
                "members": [{"task_id": t, "task_name": n, "outcome": o} for t, n, o in members],
            }
        )
        return
    for label, value in [
        ("batch", row.id),
        ("description", row.description or "-"),
        ("state", row.state),
        ("done", _progress(row)),
        *((outcome, row.outcomes[outcome]) for outcome in ENDINGS),
        ("on_complete", row.on_complete or "-"),
        ("on_success", row.on_success or "-"),
        ("created", when(row.created_at)),
        ("sealed", when(row.sealed_at)),
        ("completed", when(row.completed_at)),
    ]:
        click.echo(f"{label:>11}: {value}")
    click.echo("")
    table(
        f"members of {row.id}",
        ["task id", "task", "outcome"],
        [(t, n or "", o or "pending") for t, n, o in members],
    )
