"""``celery -A proj reliable db upgrade|current``: the store's schema."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url

from celery_reliable.cli.common import store_errors, store_of
from celery_reliable.store import migrate
from celery_reliable.store.engine import unavailable_as


@click.group()
def db() -> None:
    """The store's database (reliable_database_url)."""


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the shipped migrations (safe to run on every deploy)."""
    store = store_of(ctx)
    with store_errors(), unavailable_as(f"upgrading {_where(store.url)}"):
        before, after = migrate.upgrade(store.engine, revision)
    if before == after:
        click.echo(f"{_where(store.url)}: already at {after}")
    else:
        click.echo(f"{_where(store.url)}: upgraded {before or '(empty)'} -> {after}")


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one the code needs."""
    store = store_of(ctx)
    with store_errors(), unavailable_as(f"reading {_where(store.url)}"):
        revision = migrate.current(store.engine)
    head = migrate.head()
    state = "up to date" if revision == head else "run `celery reliable db upgrade`"
    click.echo(f"{_where(store.url)}: at {revision or '(empty)'}, code needs {head}: {state}")
