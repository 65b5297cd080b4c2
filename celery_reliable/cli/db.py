"""``celery -A proj reliable db upgrade|current``: the store's schema.

In a Django project (``reliable_database_url = "django"``) the schema belongs to
Django's migrations, like every other app's: ``python manage.py migrate`` applies
them, and these commands say so and show which of ours are applied.
"""

from __future__ import annotations

import click
from celery.exceptions import ImproperlyConfigured
from sqlalchemy.engine import URL, make_url

from celery_reliable.cli.common import store_errors, store_of
from celery_reliable.django.migration_state import APP_LABEL, our_migrations
from celery_reliable.docs import docs_url
from celery_reliable.store import Store, migrate
from celery_reliable.store.engine import unavailable_as

MIGRATE = "python manage.py migrate"


@click.group()
def db() -> None:
    """The store's database (reliable_database_url)."""


def _where(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _database(store: Store) -> str:
    # The setting as written; for "django", the URL it stands for.
    return _where(store.url if store.django_alias is None else store.engine.url)


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Apply the shipped migrations (safe to run on every deploy). In a Django project,
    `python manage.py migrate` does: this says so and exits 1."""
    store = store_of(ctx)
    if store.django_alias is not None:
        _show_django_migrations(store)
        # Exit 1: a deploy script that runs this instead of `manage.py migrate` would
        # otherwise go on with a schema nobody upgraded.
        raise click.ClickException(
            f"nothing done: run `{MIGRATE}`, which applies celery_reliable's migrations "
            "with your apps' own"
        )
    with store_errors(), unavailable_as(f"upgrading {_where(store.url)}"):
        before, after = migrate.upgrade(store.engine, revision)
    if before == after:
        click.echo(f"{_where(store.url)}: already at {after}")
    else:
        click.echo(f"{_where(store.url)}: upgraded {before or '(empty)'} -> {after}")


@db.command()
@click.pass_context
def current(ctx: click.Context) -> None:
    """Show the schema revision of the database and the one the code needs (in a Django
    project: which of celery_reliable's Django migrations are applied)."""
    store = store_of(ctx)
    if store.django_alias is not None:
        pending = _show_django_migrations(store)
        revision, head = _revision(store), migrate.head()
        # Both: Django's record of our migrations, and the schema they left behind.
        state = "up to date" if not pending and revision == head else f"run `{MIGRATE} {APP_LABEL}`"
        click.echo(f"schema at {revision or '(empty)'}, code needs {head}: {state}")
        return
    revision = _revision(store)
    head = migrate.head()
    state = "up to date" if revision == head else "run `celery reliable db upgrade`"
    click.echo(f"{_where(store.url)}: at {revision or '(empty)'}, code needs {head}: {state}")


def _revision(store: Store) -> str | None:
    with store_errors(), unavailable_as(f"reading {_database(store)}"):
        return migrate.current(store.engine)


def _show_django_migrations(store: Store) -> list[str]:
    """One line saying who owns the schema, then our migrations as ``manage.py
    showmigrations`` lists them; returns those not applied."""
    from django.db import DatabaseError

    alias = store.django_alias
    assert alias is not None
    where = _database(store)
    # Said first, before the database is read: it holds even when that fails.
    click.echo(
        f"Django's database {alias!r} ({where}): Django's migrations own celery_reliable's "
        f"schema: `{MIGRATE}` applies them (see {docs_url('django')})"
    )
    try:
        migrations = our_migrations(alias)
    except ImproperlyConfigured as exc:
        raise click.ClickException(str(exc)) from exc
    except DatabaseError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(
            f"the store is unavailable: reading Django's migrations in {where}: {message}"
        ) from exc
    click.echo(APP_LABEL)
    for name, applied in migrations:
        click.echo(f" [{'X' if applied else ' '}] {name}")
    return [name for name, applied in migrations if not applied]
