"""What the sub-commands share: the app's store, tables, and errors as click errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime, timedelta
from typing import Any

import click
from celery.exceptions import ImproperlyConfigured
from rich.console import Console
from rich.table import Table

from celery_reliable.config import as_written
from celery_reliable.errors import MissingDependency, StoreUnavailable
from celery_reliable.store import Store, store_for


def store_of(ctx: click.Context) -> Store:
    from celery_reliable.cli import app_of

    app = app_of(ctx)
    try:
        store = store_for(app)
    except (ImproperlyConfigured, MissingDependency) as exc:
        # A bad setting or a missing driver: one line, not a traceback.
        raise click.ClickException(str(exc)) from exc
    if store is None:
        name = as_written(app, "reliable_database_url")
        raise click.ClickException(f"{name} is None: there is no store")
    return store


@contextmanager
def store_errors() -> Iterator[None]:
    try:
        yield
    except StoreUnavailable as exc:
        raise click.ClickException(f"the store is unavailable: {exc}") from exc


def when(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A table on a terminal; piped or redirected, a header line and one tab-separated
    line per row with every value whole, so that grep, cut and awk see full rows."""
    if not sys.stdout.isatty():
        click.echo("\t".join(columns))
        for row in rows:
            click.echo("\t".join(one_line("" if cell is None else str(cell)) for cell in row))
        return
    out = Table(title=title)
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*("" if cell is None else str(cell) for cell in row))
    Console().print(out)


def one_line(text: str) -> str:
    # A value's own tabs and line breaks would split the row: written as \t and \n.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def as_json(items: Any) -> None:
    def plain(item: Any) -> Any:
        return asdict(item) if is_dataclass(item) and not isinstance(item, type) else item

    data = [plain(i) for i in items] if isinstance(items, list) else plain(items)
    click.echo(json.dumps(data, default=str, indent=2))


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``15m``, ``90s`` or a number of seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    text = text.strip().lower()
    try:
        if text and text[-1] in units:
            return timedelta(seconds=float(text[:-1]) * units[text[-1]])
        return timedelta(seconds=float(text))
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: use 30d, 12h, 15m, 90s or seconds") from exc
