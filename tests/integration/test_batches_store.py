"""The store's reads behind the batches page and the callback's report, on SQLite and
PostgreSQL: pages of batches newest first with cursors both ways and filters, capped
counts, pages of a batch's members by outcome, the latest ending of batches, and how a
task stands as the callback of batches. The rows are written by the store's own
``open``, ``seal`` and ``member_ended``, as ``Batch`` and its members write them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery import Celery, chain

from celery_reliable.batches.ending import serialized
from celery_reliable.store import Store
from celery_reliable.store.batches import PENDING, BatchRows
from tests.support.celery_apps import migrated_store

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 7, 9, 0)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with migrated_store(store_url, "batches_store") as found:
        yield found


def nothing(*_: Any) -> None:
    return None


def make(
    rows: BatchRows,
    at: datetime,
    members: int = 0,
    ended: dict[str, str] | None = None,
    *,
    description: str | None = None,
    on_complete: str | None = None,
    on_success: str | None = None,
    seal: bool = True,
    abandon: bool = False,
    batch_id: str | None = None,
) -> str:
    """A batch created at ``at`` with ``members`` (task ids m0, m1, ...), those of
    ``ended`` ended so, one minute apart after the seal."""
    batch_id = batch_id or str(uuid.uuid4())
    rows.open(batch_id, description, on_complete, on_success, at)
    if seal:
        rows.seal(
            batch_id, [(f"m{i}", "t.row") for i in range(members)], at, nothing, abandon=abandon
        )
    for n, (task_id, outcome) in enumerate((ended or {}).items(), 1):
        rows.member_ended(batch_id, task_id, "t.row", outcome, at + timedelta(minutes=n), nothing)
    return batch_id


def test_batches_page_newest_first_both_ways_with_filters_and_a_capped_count(
    store: Store,
) -> None:
    rows = store.batches
    # Two created at the same instant: the id breaks the tie, the same way both ways.
    ids = [make(rows, T0 + timedelta(minutes=i // 2), description=f"import {i}") for i in range(7)]
    newest_first = sorted(ids, key=lambda i: (ids.index(i) // 2, i), reverse=True)

    assert [b.id for b in rows.page(limit=3)] == newest_first[:3]
    assert [b.id for b in rows.page(before=newest_first[2], limit=3)] == newest_first[3:6]
    assert [b.id for b in rows.page(before=newest_first[5], limit=3)] == newest_first[6:]
    # After: the nearest newer ones, still newest first.
    assert [b.id for b in rows.page(after=newest_first[5], limit=3)] == newest_first[2:5]
    assert [b.id for b in rows.page(after=newest_first[1], limit=3)] == newest_first[:1]
    assert rows.page(before="no-such-batch") == []

    assert rows.count() == 7 and rows.count(cap=3) == 4
    assert [b.description for b in rows.page(text="IMPORT 3")] == ["import 3"]
    assert [b.id for b in rows.page(text=ids[4][:13])] == [ids[4]]
    assert rows.count(text="import") == 7


def test_filters_match_their_text_literally_and_by_state(store: Store) -> None:
    rows = store.batches
    percent = make(rows, T0, description="100% of rows_a")
    other = make(rows, T0, description="1000 of rowsXa")
    opened = make(rows, T0 + timedelta(hours=1), seal=False, description="still open")
    assert [b.id for b in rows.page(text="0% of rows_")] == [percent]
    assert {b.id for b in rows.page(text="of rows")} == {percent, other}
    assert [b.id for b in rows.page(state="open")] == [opened]
    assert rows.count(state="sealed") == 0 and rows.count(state="completed") == 2
    assert rows.page(text="<script>") == []


def test_members_page_by_task_id_both_ways_and_by_outcome(store: Store) -> None:
    rows = store.batches
    batch_id = make(rows, T0, 12, {"m1": "succeeded", "m5": "discarded", "m7": "failed"})
    everyone = sorted(f"m{i}" for i in range(12))  # m0, m1, m10, m11, m2, ...
    at = everyone.index
    first = rows.member_page(batch_id, limit=5)
    assert [m.task_id for m in first] == everyone[:5]
    after = rows.member_page(batch_id, after="m3", limit=5)
    assert [m.task_id for m in after] == everyone[at("m3") + 1 : at("m3") + 6]
    before = rows.member_page(batch_id, before="m5", limit=3)
    assert [m.task_id for m in before] == everyone[at("m5") - 3 : at("m5")]
    ended = {m.task_id: m for m in rows.member_page(batch_id, limit=50) if m.outcome}
    assert {t: m.outcome for t, m in ended.items()} == {
        "m1": "succeeded",
        "m5": "discarded",
        "m7": "failed",
    }
    assert ended["m5"].ended_at == T0 + timedelta(minutes=2) and ended["m5"].task_name == "t.row"
    assert [m.task_id for m in rows.member_page(batch_id, outcome="discarded")] == ["m5"]
    pending = rows.member_page(batch_id, outcome=PENDING, limit=50)
    assert len(pending) == 9 and all(m.outcome is None and m.ended_at is None for m in pending)
    assert rows.member_page("no-such-batch") == []


def test_last_endings_of_batches(store: Store) -> None:
    rows = store.batches
    quiet = make(rows, T0, 3)
    busy = make(rows, T0, 3, {"m0": "succeeded", "m2": "exhausted"})
    assert rows.last_endings([quiet, busy, "no-such-batch"]) == {busy: T0 + timedelta(minutes=2)}
    assert rows.last_endings([]) == {}


def test_how_a_task_stands_as_the_callback_of_batches(store: Store) -> None:
    app = Celery("callbacks", set_as_current=False)
    summarize = serialized(app.signature("proj.summarize", args=(42,)))
    notify = serialized(app.signature("proj.notify"))
    # Named only inside a canvas, or a longer name that starts with it: not its callback.
    inside = serialized(chain(app.signature("proj.summarize"), app.signature("proj.other")))
    longer = serialized(app.signature("proj.summarize_all"))
    rows = store.batches
    both = {"on_complete": summarize, "on_success": notify}
    make(rows, T0, 1, {"m0": "succeeded"}, **both)  # completed, good: both fired
    make(rows, T0 + timedelta(minutes=1), 2, {"m0": "failed", "m1": "succeeded"}, **both)
    make(rows, T0 + timedelta(minutes=2), 2, {"m0": "succeeded"}, **both)  # sealed: waiting
    make(rows, T0 + timedelta(minutes=3), 1, abandon=True, **both)
    make(rows, T0 + timedelta(minutes=4), on_complete=inside, on_success=longer)
    newest = make(rows, T0 + timedelta(minutes=5), 3, seal=False, description="newest", **both)

    [complete] = rows.callback_uses("proj.summarize")
    assert (complete.which, complete.batches, complete.fired) == ("on_complete", 5, 2)
    assert (complete.skipped, complete.waiting, complete.abandoned) == (0, 2, 1)
    assert complete.last is not None and complete.last.id == newest
    assert complete.to_dict()["last"]["description"] == "newest"
    [success] = rows.callback_uses("proj.notify")
    assert (success.which, success.batches, success.fired, success.skipped) == (
        "on_success",
        5,
        1,
        1,
    )
    assert (success.waiting, success.abandoned) == (2, 1)
    assert [u.which for u in rows.callback_uses("proj.summarize_all")] == ["on_success"]
    assert rows.callback_uses("proj.other") == []
    assert rows.callback_uses("proj.%") == []
