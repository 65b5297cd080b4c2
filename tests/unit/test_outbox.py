"""The outbox's pure parts: which URLs are one database, a message's row and back, and
the header that marks an outbox message."""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from celery_reliable.headers import OUTBOX_HEADER, OWN_HEADERS, from_outbox
from celery_reliable.outbox.message import OutboxMessage
from celery_reliable.outbox.publish import same_database
from celery_reliable.store.outbox import OutboxRow


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("postgresql+psycopg://app@localhost/shop", "postgresql://other:pw@127.0.0.1/shop", True),
        ("postgresql+psycopg://app@db:5433/shop", "postgresql+psycopg2://app@db:5433/shop", True),
        ("postgresql+psycopg://app@db/shop", "postgresql+psycopg://app@db/other", False),
        ("postgresql+psycopg://app@db:5433/shop", "postgresql+psycopg://app@db:5432/shop", False),
        ("postgresql+psycopg://app@db1/shop", "postgresql+psycopg://app@db2/shop", False),
        ("sqlite:///:memory:", "postgresql://app@localhost/shop", False),
    ],
)
def test_same_database(a: str, b: str, same: bool) -> None:
    assert same_database(make_url(a), make_url(b)) is same


def test_a_sqlite_file_is_one_database_by_whatever_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "shop.db").touch()
    os.symlink(tmp_path / "shop.db", tmp_path / "link.db")
    here = make_url("sqlite:///shop.db")
    assert same_database(here, make_url(f"sqlite:///{tmp_path}/shop.db"))
    assert same_database(here, make_url(f"sqlite:///{tmp_path}/link.db"))
    assert not same_database(here, make_url(f"sqlite:///{tmp_path}/other.db"))


def test_a_message_survives_its_row() -> None:
    when = datetime(2026, 12, 9, 10, 0, tzinfo=timezone.utc)
    message = OutboxMessage(
        task_id=str(uuid.uuid4()),
        task_name="shop.charge",
        exchange="",
        routing_key="celery",
        body=b'[[1], {}, {"callbacks": null}]',
        content_type="application/json",
        content_encoding="utf-8",
        headers={"id": "x", "eta": when, "tenant": uuid.UUID(int=7), OUTBOX_HEADER: 1},
        properties={"delivery_mode": 2, "priority": 3, "expiration": "60000"},
        declare=("celery",),
    )
    columns = message.columns(datetime(2026, 12, 9))
    row = OutboxRow(id=1, **columns)
    assert OutboxMessage.from_row(row) == message


def test_the_outbox_header() -> None:
    assert from_outbox({OUTBOX_HEADER: 1})
    assert not from_outbox({"reliable_sent_at": 1.0})
    assert not from_outbox(None)
    assert not from_outbox(123)  # apply(headers=123): Celery's own tests do it
    assert OUTBOX_HEADER in OWN_HEADERS  # never copied into a dead letter's re-publish
