"""Pages of a table keyed by (task name, key) (receipts, unique locks): filtered by
task and by the start of the key, in primary-key order from a cursor, so that a deep
page costs what the first does."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, select, tuple_


def by_task_and_key(
    table: Table,
    task_name: str | None,
    key_prefix: str | None,
    after: tuple[str, str] | None,
    limit: int,
    *where: Any,
) -> Any:
    """``SELECT`` of one page: the rows after the ``(task, key)`` cursor ``after``."""
    column = table.c
    query = select(table).where(*where)
    if task_name:
        query = query.where(column.task_name == task_name)
    if key_prefix:
        query = query.where(column.key.startswith(key_prefix, autoescape=True))
    if after is not None:
        query = query.where(tuple_(column.task_name, column.key) > tuple_(*after))
    return query.order_by(column.task_name, column.key).limit(limit)
