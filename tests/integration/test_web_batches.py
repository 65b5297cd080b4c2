"""The batches pages over HTTP, served by ``celery -A ... reliable web`` in a process of
its own against a real Redis (broker and result backend) and a SQLite and a PostgreSQL
store: the listing (newest first, progress, outcomes, filters, pages, a stuck-looking
batch said to be), a batch's page (its members a page at a time, a 10,000-member one
included, links to the dead letters of those that ended badly, its callbacks' state),
the overview's panel, and descriptions shown as text, never as HTML. The rows are
written by the store's own ``open``, ``seal`` and ``member_ended``, as ``Batch`` and
its members write them (``test_web_browser.py`` runs a real batch on a worker)."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from celery import Celery, chain

from celery_reliable.batches.ending import serialized
from celery_reliable.store import Store, migrate, store_for
from celery_reliable.store.timeutil import utcnow
from tests.helpers import dead_letter_fields
from tests.support.web import Client, web_env, web_server

pytestmark = pytest.mark.integration

APP = "tests.support.apps.web"
ROWS = re.compile(r'<tr id="batch-([^"]+)">')
MEMBERS = re.compile(r'<tr id="member-([^"]+)">')


@pytest.fixture(scope="module")
def env(
    redis_url: str, module_store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    return {
        **web_env(redis_url, tmp_path_factory.mktemp("web-batches")),
        "RELIABLE_TEST_STORE": module_store_url,
    }


@pytest.fixture(scope="module")
def app(env: dict[str, str]) -> Celery:
    """An app on the server's broker, backend and store, to write what the pages show."""
    app = Celery(
        "web_batches",
        broker=env["RELIABLE_TEST_BROKER"],
        backend=env["RELIABLE_TEST_BROKER"],
        set_as_current=False,
    )
    app.conf.update(reliable_database_url=env["RELIABLE_TEST_STORE"])
    return app


@pytest.fixture(scope="module")
def store(app: Celery) -> Iterator[Store]:
    found = store_for(app)
    assert found is not None
    migrate.upgrade(found.engine)
    yield found
    found.dispose()


@pytest.fixture(scope="module")
def server(env: dict[str, str], store: Store) -> Iterator[str]:
    with web_server(APP, env) as running:
        yield running.url


def nothing(*_: Any) -> None:
    return None


def batch(
    store: Store,
    members: int,
    ended: dict[int, str] | None = None,
    *,
    at: datetime | None = None,
    seal: bool = True,
    **columns: Any,
) -> str:
    """A batch of ``members`` (task ids ``<batch>-m0000``, ...), those of ``ended``
    ended so (at ``at``, default now), as ``Batch`` and its members write it."""
    batch_id = str(uuid.uuid4())
    at = at or utcnow()
    rows = store.batches
    rows.open(batch_id, columns.get("description"), *_callbacks(columns), at)
    if seal:
        task_ids = [(f"{batch_id}-m{i:04}", "shop.import_row") for i in range(members)]
        rows.seal(batch_id, task_ids, at, nothing)
    for i, outcome in (ended or {}).items():
        rows.member_ended(batch_id, f"{batch_id}-m{i:04}", "shop.import_row", outcome, at, nothing)
    return batch_id


def _callbacks(columns: dict[str, Any]) -> tuple[str | None, str | None]:
    return columns.get("on_complete"), columns.get("on_success")


def test_the_listing_shows_batches_newest_first_with_progress_and_outcomes(
    server: str, store: Store
) -> None:
    tag, now = uuid.uuid4().hex[:8], utcnow()
    older = batch(
        store, 4, {0: "succeeded", 1: "discarded"}, at=now, description=f"{tag} import 41"
    )
    newer = batch(
        store,
        2,
        {0: "succeeded", 1: "succeeded"},
        at=now + timedelta(seconds=1),
        description=f"{tag} import 42",
    )
    page = Client(server).get(f"/batches?q={tag}")
    assert page.status == 200, page.text[:500]
    shown = ROWS.findall(page.text)
    assert shown.index(newer) < shown.index(older)
    row = page.text.split(f'<tr id="batch-{older}">')[1].split("</tr>")[0]
    assert f'href="/batches/{older}"' in row
    assert ">sealed</span>" in row and "2/4 · 50%" in row
    # The bar: 1 succeeded (25% wide) then 1 discarded (the next 25%), the rest pending.
    assert '<rect class="ok" x="0.0" y="0" width="25.0" height="10">' in row
    assert '<rect class="error" x="25.0" y="0" width="25.0" height="10">' in row
    assert "1 succeeded</span>" in row and "1 discarded</span>" in row
    assert "import 41" in row and "stuck?" not in row
    done = page.text.split(f'<tr id="batch-{newer}">')[1].split("</tr>")[0]
    assert ">completed</span>" in done and "2/2 · 100%" in done
    # The navigation names the page.
    assert ROWS.findall(page.text) == [newer, older]
    assert '<a href="/batches" aria-current="page">Batches</a>' in page.text


def test_a_description_is_shown_as_text_never_as_html(server: str, store: Store) -> None:
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    batch_id = batch(store, 1, description=evil)
    client = Client(server)
    for path in ("/batches", f"/batches/{batch_id}", "/?refresh=0"):
        page = client.get(path)
        assert page.status == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
        assert html.escape(evil, quote=False)[:30] in page.text.replace("&#34;", '"'), path


def test_a_sealed_batch_quiet_for_long_looks_stuck(server: str, store: Store) -> None:
    tag, long_ago = uuid.uuid4().hex[:8], utcnow() - timedelta(hours=2)
    quiet = batch(store, 3, {0: "succeeded"}, at=long_ago, description=f"{tag} quiet")
    opened = batch(store, 0, at=long_ago, seal=False, description=f"{tag} never sealed")
    busy = batch(store, 3, {0: "succeeded"}, description=f"{tag} busy")
    client = Client(server)
    page = client.get(f"/batches?q={tag}")
    row = page.text.split(f'<tr id="batch-{quiet}">')[1].split("</tr>")[0]
    assert re.search(r"stuck\? no member ended for 2h( \d+m)?", row), row
    row = page.text.split(f'<tr id="batch-{opened}">')[1].split("</tr>")[0]
    assert ">open</span>" in row and "stuck? open for 2h" in row and "0/?" in row
    assert "stuck?" not in page.text.split(f'<tr id="batch-{busy}">')[1].split("</tr>")[0]
    detail = client.get(f"/batches/{quiet}")
    assert "stuck? no member ended for 2h" in detail.text
    assert "waiting for 2 members to end" in detail.text
    pending = client.get(f"/batches/{quiet}?outcome=pending")
    assert MEMBERS.findall(pending.text) == [f"{quiet}-m0001", f"{quiet}-m0002"]


def test_the_listing_filters_and_pages_like_the_dead_letters(server: str, store: Store) -> None:
    tag, now = uuid.uuid4().hex[:8], utcnow()
    ids = [
        batch(store, 1, {0: "succeeded"}, at=now + timedelta(seconds=i), description=f"{tag} #{i}")
        for i in range(53)
    ]
    client = Client(server)
    first = client.get(f"/batches?q={tag}")
    assert re.search(r'<span id="matching">53</span>', first.text)
    assert ROWS.findall(first.text) == ids[::-1][:50]
    older = re.search(r'href="(/batches\?[^"]*before=[^"]+)" id="older"', first.text)
    assert older and "newer" not in first.text.split('class="pager"')[1]
    second = client.get(html.unescape(older.group(1)))
    assert ROWS.findall(second.text) == ids[::-1][50:]
    newer = re.search(r'href="(/batches\?[^"]*after=[^"]+)" id="newer"', second.text)
    assert newer and 'id="older"' not in second.text
    assert ROWS.findall(client.get(html.unescape(newer.group(1))).text) == ids[::-1][:50]
    only = client.get(f"/batches?q={tag}+%2352&state=completed")
    assert ROWS.findall(only.text) == [ids[52]]
    assert ROWS.findall(client.get(f"/batches?q={tag}&state=sealed").text) == []
    assert client.get("/batches?state=done").status == 400


def test_a_batchs_page_pages_its_members_and_links_their_dead_letters(
    server: str, store: Store
) -> None:
    batch_id = batch(
        store,
        120,
        {3: "discarded", 7: "exhausted", 8: "succeeded", 60: "failed"},
        description="import 7",
    )
    letters = {
        i: store.dead_letters.write(
            **dead_letter_fields(task_id=f"{batch_id}-m{i:04}", task_name="shop.import_row"),
        )
        for i in (3, 60)
    }
    client = Client(server)
    page = client.get(f"/batches/{batch_id}")
    assert page.status == 200
    assert MEMBERS.findall(page.text) == [f"{batch_id}-m{i:04}" for i in range(50)]
    row = page.text.split(f'<tr id="member-{batch_id}-m0003">')[1].split("</tr>")[0]
    assert ">discarded</span>" in row
    assert f'<a href="/dead-letters/{letters[3]}" class="dead-letter">' in row
    # Exhausted, and its dead letter purged (or never kept): said so.
    assert "none kept" in page.text.split(f'<tr id="member-{batch_id}-m0007">')[1].split("</tr>")[0]
    assert ">pending</span>" in page.text.split(f'<tr id="member-{batch_id}-m0010">')[1]
    assert "4/120 · 3%" in page.text and "waiting for 116 members" in page.text
    following = re.search(r'href="([^"]+)" id="next"', page.text)
    assert following
    second = client.get(html.unescape(following.group(1)))
    assert MEMBERS.findall(second.text) == [f"{batch_id}-m{i:04}" for i in range(50, 100)]
    assert f'href="/dead-letters/{letters[60]}"' in second.text
    previous = re.search(r'href="([^"]+)" id="previous"', second.text)
    assert previous
    assert MEMBERS.findall(client.get(html.unescape(previous.group(1))).text)[0].endswith("m0000")
    bad = client.get(f"/batches/{batch_id}?outcome=failed")
    assert MEMBERS.findall(bad.text) == [f"{batch_id}-m0060"]
    assert client.get(f"/batches/{batch_id}?outcome=lost").status == 400
    missing = client.get("/batches/no-such-batch")
    assert missing.status == 404 and "no batch no-such-batch" in missing.text


def test_a_batchs_callbacks_and_what_became_of_them(server: str, store: Store, app: Celery) -> None:
    summarize = serialized(app.signature("shop.summarize", args=(42,)))
    notify = serialized(app.signature("shop.notify"))
    both = {"on_complete": summarize, "on_success": notify}
    client = Client(server)

    waiting = batch(store, 2, {0: "succeeded"}, **both)
    page = client.get(f"/batches/{waiting}")
    for which in ("on_complete", "on_success"):
        row = page.text.split(f'<tr id="callback-{which}">')[1].split("</tr>")[0]
        assert f"{waiting}-{which}" in row and "not fired yet" in row
    assert "shop.<wbr>summarize" in page.text

    failed = batch(store, 1, {0: "failed"}, **both)
    # The callback ran and its result is in the result backend; on_success never fires.
    app.backend.store_result(f"{failed}-on_complete", "done", "SUCCESS")
    page = client.get(f"/batches/{failed}")
    complete = page.text.split('<tr id="callback-on_complete">')[1].split("</tr>")[0]
    assert "fired: succeeded" in complete
    success = page.text.split('<tr id="callback-on_success">')[1].split("</tr>")[0]
    assert "not fired: a member ended badly" in success

    dead = batch(store, 1, {0: "succeeded"}, on_complete=summarize)
    letter = store.dead_letters.write(
        **dead_letter_fields(task_id=f"{dead}-on_complete", task_name="shop.summarize")
    )
    page = client.get(f"/batches/{dead}")
    assert f'<a href="/dead-letters/{letter}">dead letter {letter}</a>' in page.text
    assert 'id="callback-on_success"' not in page.text

    # A canvas keeps Celery's ids: no task id of the batch's to look up.
    canvas = serialized(chain(app.signature("shop.summarize"), app.signature("shop.notify")))
    chained = batch(store, 1, {0: "succeeded"}, on_complete=canvas)
    row = client.get(f"/batches/{chained}").text.split('<tr id="callback-on_complete">')[1]
    assert "celery.<wbr>chain" in row and "fired (a canvas: Celery&#39;s own task ids)" in row

    plain = batch(store, 1)
    assert "None: the batch was opened without" in client.get(f"/batches/{plain}").text


def test_a_10000_member_batch_is_shown_a_page_at_a_time(server: str, store: Store) -> None:
    # (How long a page takes is for benchmarks, not tests: the store reads one page
    # along the members' primary key, Batches.member_page.)
    big = batch(store, 10_000, dict.fromkeys(range(0, 10000, 1000), "succeeded"))
    client = Client(server)
    page = client.get(f"/batches/{big}?outcome=pending")
    assert page.status == 200 and len(MEMBERS.findall(page.text)) == 50
    assert "10/10000" in page.text and 'id="next"' in page.text


def test_the_overview_shows_the_newest_batches(server: str, store: Store) -> None:
    # Newer than every batch the module's other tests wrote (some a minute ahead).
    later = utcnow() + timedelta(hours=1)
    newest = batch(store, 3, {0: "succeeded"}, at=later, description="overview's")
    page = Client(server).get("/?refresh=0")
    panel = page.text.split('<section class="panel" id="batches">')[1].split("</section>")[0]
    assert f'href="/batches/{newest}"' in panel and "overview&#39;s" in panel
    assert "1/3 · 33%" in panel and 'href="/batches">all batches</a>' in panel
