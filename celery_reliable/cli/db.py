"""``celery -A proj reliable db upgrade|current``: the store's schema."""

from __future__ import annotations

import click
from sqlalchemy.engine import make_url

from celery_reliable.errors import StoreUnavailable


@click.group()
def db() -> None:
    """The receipts / dead-letter database (reliable_database_url)."""


def _store(ctx: click.Context) -> object:
    from celery_reliable.cli import app_of
    from celery_reliable.store import store_for

    app = app_of(ctx)
    store = store_for(app)
    if store is None:
        raise click.ClickException("reliable_database_url is None: there is no store")
    return store


def _where(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the shipped migrations (safe to run on every deploy)."""
    from celery_reliable.store import Store, migrate
    from celery_reliable.store.engine import unavailable_as

    store = _store(ctx)
    assert isinstance(store, Store)
    try:
        with unavailable_as(f"upgrading {_where(store.url)}"):
            before, after = migrate.upgrade(store.engine, revision)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    if before == after:
        click.echo(f"{_where(store.url)}: already at {after}")
    else:
        click.echo(f"{_where(store.url)}: upgraded {before or '(empty)'} -> {after}")


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one the code needs."""
    from celery_reliable.store import Store, migrate
    from celery_reliable.store.engine import unavailable_as

    store = _store(ctx)
    assert isinstance(store, Store)
    try:
        with unavailable_as(f"reading {_where(store.url)}"):
            revision = migrate.current(store.engine)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    head = migrate.head()
    state = "up to date" if revision == head else "run `reliable db upgrade`"
    click.echo(f"{_where(store.url)}: at {revision or '(empty)'}, code needs {head}: {state}")
