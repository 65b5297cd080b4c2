"""The web view over HTTP, served by ``celery -A ... reliable web`` in a process of its
own against a real Redis and SQLite store: pages, security (CSRF, basic auth, roles,
loopback-only, headers), keyset pagination, releases, a store or broker that is down."""

from __future__ import annotations

import html
import importlib
import os
import re
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any

import pytest

from celery_reliable.store.timeutil import utcnow
from tests.helpers import ready_store
from tests.support.servers import free_port
from tests.support.web import ROOT, Client, form_token, web_env, web_server

pytestmark = pytest.mark.integration

APP = "tests.support.apps.web"
PAGES = [
    "/",
    "/dead-letters",
    "/batches",
    "/receipts",
    "/locks",
    "/gates",
    "/workers",
    "/static/style.css",
]


def load_app(env: dict[str, str]) -> ModuleType:
    """The test app as the server imports it, with the same environment."""
    os.environ.update(env)
    import tests.support.apps.web as module

    return importlib.reload(module)


@pytest.fixture(scope="module")
def env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return web_env(redis_url, tmp_path_factory.mktemp("web"))


@pytest.fixture(scope="module")
def store(env: dict[str, str]) -> Any:
    return ready_store(load_app(env).app)


@pytest.fixture(scope="module")
def server(env: dict[str, str], store: Any) -> Iterator[str]:
    with web_server(APP, env) as running:
        yield running.url


def dead_letter(store: Any, task_name: str = "web.charge", **fields: Any) -> int:
    row = {
        "task_id": "t-" + os.urandom(4).hex(),
        "task_name": task_name,
        "queue": "celery",
        "args": [1],
        "kwargs": {},
        "options": {"exchange": "", "routing_key": "celery", "headers": {}},
        "redact": False,
        "outcome": "discarded",
        "exc_type": "tests.support.apps.web.GatewayRefused",
        "exc_message": "card declined",
        "traceback": "Traceback (most recent call last):\nGatewayRefused: card declined",
        "reason": "GatewayRefused: card declined (discard_on GatewayRefused)",
        "attempts": 1,
    }
    row.update(fields)
    return int(store.dead_letters.write(**row))


def test_every_page_answers_with_the_security_headers_and_a_csrf_cookie(server: str) -> None:
    client = Client(server)
    for path in PAGES:
        answer = client.get(path)
        assert answer.status == 200, (path, answer.text[:500])
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp, path
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert answer.headers["Referrer-Policy"] == "same-origin"
        assert answer.headers["Cache-Control"] == "no-store"
    cookie = Client(server).get("/").headers["Set-Cookie"]
    assert "reliable_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie


def test_a_redacted_dead_letter_never_shows_its_arguments(server: str, store: Any) -> None:
    secret = "4111111111111111"
    letter = dead_letter(store, "web.store_card", args=[secret], redact=True)
    client = Client(server)
    for path in (f"/dead-letters/{letter}", "/dead-letters", "/dead-letters?task=web.store_card"):
        answer = client.get(path)
        assert answer.status == 200
        assert secret not in answer.text
    assert "Redacted" in client.get(f"/dead-letters/{letter}").text


def test_a_post_without_the_csrf_token_changes_nothing(server: str, store: Any) -> None:
    letter = dead_letter(store)
    client = Client(server)
    page = client.get(f"/dead-letters/{letter}")
    token = form_token(page.text)
    act = {"do": "purge-one", "id": letter, "confirmed": "1"}

    refused = [
        client.post("/dead-letters/act", act),  # no token
        client.post("/dead-letters/act", {**act, "csrf_token": "x" * 43}),  # wrong token
        # Right token, but the request comes from another site.
        client.post(
            "/dead-letters/act",
            {**act, "csrf_token": token},
            headers={"Origin": "http://evil.example"},
        ),
        # Right token without the cookie (another browser, a forged form).
        Client(server).post("/dead-letters/act", {**act, "csrf_token": token}),
    ]
    for answer in refused:
        assert answer.status == 403, answer.text
    assert "CSRF token missing or wrong" in refused[0].text
    assert "cross-origin" in refused[2].text
    assert store.dead_letters.get(letter) is not None
    # A GET never acts.
    assert client.get(f"/dead-letters/act?do=purge-one&id={letter}&confirmed=1").status == 405
    assert store.dead_letters.get(letter) is not None

    # The same form, with its token: asks first, then acts.
    asked = client.post("/dead-letters/act", {**act, "confirmed": "", "csrf_token": token})
    assert asked.status == 200 and "Purge 1 dead letter?" in asked.text
    assert store.dead_letters.get(letter) is not None
    purged = client.post(
        "/dead-letters/act", {**act, "csrf_token": token}, headers={"Origin": server}
    )
    assert purged.status == 303 and purged.headers["Location"].endswith("/dead-letters")
    assert store.dead_letters.get(letter) is None
    assert "purged 1 dead letter" in client.get("/dead-letters").text


def test_dead_letters_page_by_keyset_and_filter(server: str, store: Any) -> None:
    ids = [
        dead_letter(store, "web.paged", args=[n], reason=f"slow gateway {n}") for n in range(120)
    ]
    client = Client(server)
    seen: list[int] = []
    path = "/dead-letters?task=web.paged"
    pages = 0
    while path:
        answer = client.get(path)
        assert answer.status == 200
        pages += 1
        seen += [int(i) for i in re.findall(r'<tr id="dead-(\d+)">', answer.text)]
        older = re.search(r'href="([^"]+)" id="older"', answer.text)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert pages == 3
    assert seen == sorted(ids, reverse=True)
    # Newer goes back to the page before.
    second = client.get(f"/dead-letters?task=web.paged&before={ids[-50]}")
    newer = re.search(r'href="([^"]+)" id="newer"', second.text)
    assert newer is not None
    back = client.get(newer.group(1).replace("&amp;", "&"))
    assert [int(i) for i in re.findall(r'<tr id="dead-(\d+)">', back.text)] == ids[-50:][::-1]
    # Text in the reason, case-insensitive; an outcome; a bad value is one line.
    found = client.get("/dead-letters?task=web.paged&q=GATEWAY+7")
    assert '<span id="matching">11</span>' in found.text  # 7, 70..79
    assert client.get("/dead-letters?task=web.paged&outcome=failed").text.count('id="dead-') == 0
    bad = client.get("/dead-letters?outcome=lost")
    assert bad.status == 400 and "outcome must be one of discarded, exhausted, failed" in bad.text


def test_purge_every_dead_letter_a_filter_matches(server: str, store: Any) -> None:
    for n in range(7):
        dead_letter(store, "web.bulk_purge", reason=f"number {n}")
    keep = dead_letter(store, "web.bulk_purge_other")
    client = Client(server)
    token = form_token(client.get("/dead-letters?task=web.bulk_purge").text)
    form = {"do": "purge-matching", "task": "web.bulk_purge", "csrf_token": token}
    asked = client.post("/dead-letters/act", form)
    assert "Purge 7 dead letters?" in asked.text
    # One more arrives while the operator reads the confirmation: it is not covered.
    late = dead_letter(store, "web.bulk_purge", reason="arrived after the question")
    done = client.post("/dead-letters/act", confirmation(asked.text))
    assert done.status == 303
    assert "purged 7 dead letters" in client.get("/dead-letters").text
    assert [d.id for d in store.dead_letters.list(task_name="web.bulk_purge")] == [late]
    assert store.dead_letters.get(keep) is not None
    # A confirmed form that does not say what it counted covers nothing.
    bare = client.post("/dead-letters/act", {**form, "confirmed": "1"})
    assert bare.status == 303 and store.dead_letters.get(late) is not None


def confirmation(html: str) -> list[tuple[str, str]]:
    """The hidden fields of a confirmation page's form: what "Yes" posts."""
    form = html[html.index('class="confirm-form"') :]
    return re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form)


def test_retrying_all_retried_ones_retries_nothing(server: str, store: Any) -> None:
    letter = dead_letter(store, "web.retried_set")
    waiting = dead_letter(store, "web.retried_set")
    with store.engine.begin() as connection:
        from sqlalchemy import update

        from celery_reliable.store.schema import dead_letters

        connection.execute(
            update(dead_letters).where(dead_letters.c.id == letter).values(retried_at=utcnow())
        )
    client = Client(server)
    token = form_token(client.get("/dead-letters").text)
    form = {
        "do": "retry-matching",
        "task": "web.retried_set",
        "state": "retried",
        "csrf_token": token,
    }
    asked = client.post("/dead-letters/act", form)
    assert "Retry 0 dead letters?" in asked.text
    client.post("/dead-letters/act", confirmation(asked.text))
    assert store.dead_letters.get(waiting).retried_at is None


def test_bad_parameters_are_a_400_or_404_with_the_headers(server: str) -> None:
    client = Client(server)
    for path, status, words in [
        ("/dead-letters?before=%C2%B2", 400, "before must be a dead letter id"),
        ("/dead-letters?after=-1", 400, "after must be a dead letter id"),
        ("/dead-letters/99999999999999999999999", 404, "no dead letter"),
        ("/dead-letters?from=yesterday", 400, "from: 'yesterday' is not a date and time"),
        ("/receipts?after=NQ==", 400, "after: not a cursor this page made"),
        ("/locks?after=%%%", 400, "after: not a cursor this page made"),
        ("/receipts?state=lost", 400, "state must be one of"),
    ]:
        answer = client.get(path)
        assert (answer.status, path) == (status, path)
        assert words in html.unescape(answer.text), path
        assert answer.headers["X-Frame-Options"] == "DENY"
    assert client.get("/?refresh=%C2%B2").status == 200
    # A time with an offset is taken in UTC.
    assert client.get("/dead-letters?period=1h&from=2026-11-24T05:04%2B02:00").status == 200


def test_date_filters_take_iso_times_strictly(server: str, store: Any) -> None:
    """From and To take what the table shows (``YYYY-MM-DD HH:MM``, seconds and a
    ``T`` allowed), to the minute or the day given; anything else is a 400 that says
    what to write, never a guess."""
    from sqlalchemy import update

    from celery_reliable.store.schema import dead_letters

    times = {
        "early": datetime(2026, 11, 20, 10, 15, 30),
        "late": datetime(2026, 11, 20, 23, 59, 59),
        "next": datetime(2026, 11, 21, 0, 0, 0),
    }
    ids = {}
    for name, moment in times.items():
        ids[name] = dead_letter(store, "web.dated", reason=name)
        with store.engine.begin() as connection:
            connection.execute(
                update(dead_letters).where(dead_letters.c.id == ids[name]).values(created_at=moment)
            )
    client = Client(server)

    def found(query: str) -> set[str]:
        answer = client.get("/dead-letters?task=web.dated&" + query)
        assert answer.status == 200, (query, answer.text[:300])
        shown = {int(i) for i in re.findall(r'<tr id="dead-(\d+)">', answer.text)}
        return {name for name, i in ids.items() if i in shown}

    assert found("from=2026-11-20+10:15&to=2026-11-20+10:15") == {"early"}
    assert found("from=2026-11-20T10:15:31") == {"late", "next"}
    assert found("to=2026-11-20") == {"early", "late"}  # the whole day
    assert found("from=2026-11-21") == {"next"}
    assert found("to=2026-11-20+23:59:59") == {"early", "late"}
    # What was given is shown back as given, in the text inputs.
    page = client.get("/dead-letters?task=web.dated&from=2026-11-20+10:15").text
    assert 'name="from" value="2026-11-20 10:15"' in page
    assert 'placeholder="YYYY-MM-DD HH:MM"' in page
    for value in ("20261120", "2026-11-20T10", "11/20/2026", "2026-13-01", "2026-11-20 25:00"):
        answer = client.get("/dead-letters?from=" + urllib.parse.quote(value))
        assert answer.status == 400, value
        assert (
            f"from: {value!r} is not a date and time: write YYYY-MM-DD HH:MM (UTC)"
            in html.unescape(answer.text)
        ), value


def test_retried_as_links_the_job_and_its_outcome_and_back(
    env: dict[str, str], server: str, store: Any
) -> None:
    """A dead letter retried while the gateway still refuses comes back as a second
    one: the first links to it and says it was discarded again, the second links back
    to the first; retried once more when the gateway takes it, the job's outcome comes
    from the result backend."""
    import redis

    from celery_reliable.store.dead_letters import DeadLetterFilter
    from tests.support.waiting import wait_until
    from tests.support.workers import embedded_worker

    # A charge: the outcome history of web.ship is test_overview_counts_from_the_history's.

    module = load_app(env)
    flags = redis.Redis.from_url(env["RELIABLE_TEST_BROKER"])
    flags.sadd(module.REFUSED, "charge:901")

    def letter_of(task_id: str) -> Any:
        def found() -> Any:
            letters = store.dead_letters.page(DeadLetterFilter(task_name="web.charge"), 100)
            return next((letter for letter in letters if letter.task_id == task_id), None)

        return wait_until(found, f"a dead letter for task {task_id}", interval=0.1)

    with embedded_worker(module.app):
        first = letter_of(module.charge.delay(901).id)
        again = store.dead_letters.retry(first.id)
        second = letter_of(again.id)
        flags.srem(module.REFUSED, "charge:901")
        last = store.dead_letters.retry(second.id)
        last.get(timeout=20)
    client = Client(server)

    page = client.get(f"/dead-letters/{first.id}").text
    retried = re.search(r'<dd id="retried">(.*?)</dd>', page, re.S)
    assert retried is not None
    assert f'<a href="/dead-letters/{second.id}" id="retried-job">{again.id}</a>' in retried[1]
    assert '<span class="count discarded">discarded</span> again' in retried[1]
    assert 'id="retry-of"' not in page

    page = client.get(f"/dead-letters/{second.id}").text
    origin = re.search(r'<dd id="retry-of">(.*?)</dd>', page, re.S)
    assert origin is not None
    assert f'<a href="/dead-letters/{first.id}">dead letter {first.id}</a>' in origin[1]
    retried = re.search(r'<dd id="retried">(.*?)</dd>', page, re.S)
    assert retried is not None
    assert last.id in retried[1] and 'id="retried-job"' not in retried[1]
    assert '<span class="count succeeded">succeeded</span>' in retried[1]

    listing = client.get("/dead-letters?task=web.charge").text
    rows = dict(re.findall(r'<tr id="dead-(\d+)">(.*?)</tr>', listing, re.S))
    assert f'<a href="/dead-letters/{second.id}">{again.id}</a>' in rows[str(first.id)]
    assert '<span class="count discarded">discarded</span>' in rows[str(first.id)]
    assert f'retry of <a href="/dead-letters/{first.id}">{first.id}</a>' in rows[str(second.id)]
    assert (
        '<span class="count succeeded" title="result backend">succeeded</span>'
        in rows[str(second.id)]
    )


def test_another_host_name_is_refused_without_credentials(server: str) -> None:
    """DNS rebinding: a page whose name now points at 127.0.0.1 is refused."""
    client = Client(server)
    port = server.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "localhost"):
        assert client.get("/gates", headers={"Host": host}).status == 200, host
    refused = client.get("/gates", headers={"Host": f"rebind.attacker.example:{port}"})
    assert refused.status == 403 and "Host header" in refused.text


def test_release_an_abandoned_claim_and_a_unique_lock(server: str, store: Any) -> None:
    store.receipts.claim("web.charge", "order-77", "hash", "task-77", lease_seconds=-5)
    store.unique.acquire("web.ship", "order-78", "task-78", period=600)
    client = Client(server)
    listing = client.get("/receipts?state=abandoned")
    assert "order-77" in listing.text and "abandoned" in listing.text
    token = form_token(listing.text)
    claim = {"task": "web.charge", "key": "order-77", "task_id": "task-77", "csrf_token": token}
    asked = client.post("/receipts/release", claim)
    assert "Its lease ran out" in asked.text
    assert client.post("/receipts/release", {**claim, "confirmed": "1"}).status == 303
    assert store.receipts.get("web.charge", "order-77") is None

    assert "order-78" in client.get("/locks?task=web.ship").text
    lock = {"task": "web.ship", "key": "order-78", "task_id": "task-78", "csrf_token": token}
    assert "Release the unique lock" in client.post("/locks/release", lock).text
    assert client.post("/locks/release", {**lock, "confirmed": "1"}).status == 303
    assert store.unique.holder("web.ship", "order-78") is None


def test_receipts_page_by_keyset(server: str, store: Any) -> None:
    for n in range(60):
        store.receipts.claim("web.keys", f"k-{n:03d}", "hash", f"task-{n}", lease_seconds=60)
    client = Client(server)
    first = client.get("/receipts?task=web.keys")
    keys = re.findall(r'<td class="mono">(k-\d+)</td>', first.text)
    assert keys == [f"k-{n:03d}" for n in range(50)]
    after = re.search(r'href="([^"]+)" id="next"', first.text)
    assert after is not None
    rest = client.get(after.group(1).replace("&amp;", "&"))
    assert re.findall(r'<td class="mono">(k-\d+)</td>', rest.text) == [
        f"k-{n:03d}" for n in range(50, 60)
    ]
    assert 'id="next"' not in rest.text
    prefix = client.get("/receipts?task=web.keys&key=k-05")
    assert re.findall(r'<td class="mono">(k-\d+)</td>', prefix.text) == [
        f"k-{n:03d}" for n in range(50, 60)
    ]


def test_gates_page_shows_each_task_and_its_waivers(server: str) -> None:
    text = Client(server).get("/gates").text
    # Each name foldable after a dot or an underscore only (a <wbr>), never in a word.
    for task in ("web.<wbr>charge", "web.<wbr>ship", "web.<wbr>store_<wbr>card"):
        assert f'<td class="name">{task}</td>' in text
    assert "a test" in text  # the idempotency waiver's reason
    assert "reliable_statsd_host is not set" in text


def test_without_credentials_a_non_loopback_bind_refuses_to_start(env: dict[str, str]) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP,
            "reliable",
            "web",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "Error: refusing to serve the web view on 0.0.0.0: without credentials it binds only "
        "to a loopback address (127.0.0.1, ::1); set reliable_web_auth = 'user:password' to "
        "serve it on other addresses"
    ]


def test_with_credentials_every_page_needs_them_and_viewers_cannot_act(
    env: dict[str, str], store: Any
) -> None:
    letter = dead_letter(store)
    secured = {
        **env,
        "WEB_TEST_AUTH": "admin:s3cret:with:colons",
        "WEB_TEST_READ_ONLY_AUTH": "viewer:look",
    }
    with web_server(APP, secured, host="0.0.0.0") as running:
        anonymous = Client(running.url)
        for path in [*PAGES, f"/dead-letters/{letter}"]:
            answer = anonymous.get(path)
            assert answer.status == 401, path
            assert answer.headers["WWW-Authenticate"].startswith('Basic realm="celery_reliable"')
            assert anonymous.get(path, auth=("admin", "wrong")).status == 401
            assert anonymous.get(path, auth=("viewer", "s3cret:with:colons")).status == 401
        assert anonymous.post("/dead-letters/act", {"do": "purge-one"}).status == 401

        admin = Client(running.url, auth=("admin", "s3cret:with:colons"))
        viewer = Client(running.url, auth=("viewer", "look"))
        for path in PAGES:
            assert admin.get(path).status == 200
            assert viewer.get(path).status == 200
        page = viewer.get(f"/dead-letters/{letter}")
        assert "read-only" in page.text and 'id="purge-one"' not in page.text
        assert 'id="purge-one"' in admin.get(f"/dead-letters/{letter}").text
        token = viewer.csrf()
        refused = viewer.post(
            "/dead-letters/act",
            {"do": "purge-one", "id": letter, "confirmed": "1", "csrf_token": token},
        )
        assert refused.status == 403 and "read-only credentials" in refused.text
        assert store.dead_letters.get(letter) is not None


def test_a_store_that_is_down_is_one_line_on_every_page(env: dict[str, str]) -> None:
    down = {**env, "RELIABLE_TEST_STORE": f"postgresql+psycopg://u:p@127.0.0.1:{free_port()}/x"}
    with web_server(APP, down) as running:
        client = Client(running.url)
        for path in ["/", "/dead-letters", "/dead-letters/1", "/receipts", "/locks"]:
            answer = client.get(path)
            assert answer.status == 503, path
            message = re.search(r'<p class="error" id="error-message">(.*?)</p>', answer.text, re.S)
            assert message is not None
            assert message.group(1).startswith("the store is unavailable: ")
            assert "\n" not in message.group(1)
        # The gates need no store.
        assert client.get("/gates").status == 200


def test_a_broker_that_is_down_leaves_the_overview_readable(
    env: dict[str, str], store: Any
) -> None:
    # The broker down, the result backend (another Redis) up.
    down = {
        **env,
        "RELIABLE_TEST_BROKER": f"redis://127.0.0.1:{free_port()}/0",
        "RELIABLE_TEST_BACKEND": env["RELIABLE_TEST_BROKER"],
    }
    letters = [dead_letter(store, "web.no_broker") for _ in range(3)]
    with web_server(APP, down) as running:
        client = Client(running.url)
        answer = client.get("/")
        assert answer.status == 200
        assert "the broker could not be read" in answer.text
        assert "web.charge" in answer.text
        workers = client.get("/workers")
        assert workers.status == 200 and "the workers could not be asked" in workers.text
        # A bulk retry stops at the first publish the broker refuses, and says so.
        token = form_token(client.get("/dead-letters").text)
        asked = client.post(
            "/dead-letters/act",
            {"do": "retry-matching", "task": "web.no_broker", "csrf_token": token},
        )
        assert client.post("/dead-letters/act", confirmation(asked.text)).status == 303
        notice = client.get("/dead-letters?task=web.no_broker").text
        assert "retried 0 dead letters; stopped there, the rest not retried: publishing" in notice
    assert all(store.dead_letters.get(i).retried_at is None for i in letters)


def test_a_result_backend_that_is_down_leaves_retried_as_readable(
    env: dict[str, str], store: Any
) -> None:
    """What became of a retried job is asked of the result backend: one that is down
    costs the pages a bounded wait and a word, never the page."""
    from sqlalchemy import update

    from celery_reliable.store.schema import dead_letters

    letter = dead_letter(store, "web.backend_down")
    with store.engine.begin() as connection:
        connection.execute(
            update(dead_letters)
            .where(dead_letters.c.id == letter)
            .values(retried_at=utcnow(), retried_task_id="lost-in-the-backend")
        )
    down = {**env, "RELIABLE_TEST_BACKEND": f"redis://127.0.0.1:{free_port()}/0"}
    with web_server(APP, down) as running:
        client = Client(running.url)
        for path in ("/dead-letters?task=web.backend_down", f"/dead-letters/{letter}"):
            started = time.monotonic()
            answer = client.get(path)
            assert answer.status == 200, (path, answer.text[:300])
            assert time.monotonic() - started < 10, path
            assert "lost-in-the-backend" in answer.text
            assert "not known" in answer.text
            assert "the result backend" in html.unescape(answer.text)


def test_overview_counts_from_the_history(server: str, store: Any) -> None:
    from celery_reliable.store.history import MinuteCounts

    minute = utcnow().replace(second=0, microsecond=0)
    counts = {}
    for outcome, n in (("succeeded", 40), ("retried", 6), ("failed", 2), ("limited", 9)):
        c = MinuteCounts()
        for _ in range(n):
            c.add(0.02)
        counts[("web.ship", minute, "celery", outcome)] = c
    store.history.add(counts)
    text = Client(server).get("/?refresh=0").text
    row = re.search(r'<td class="name">web\.<wbr>ship</td>(.*?)</tr>', text, re.S)
    assert row is not None
    cells = row.group(1)
    assert "40 succeeded" in cells and "6 retried" in cells and "2 failed" in cells
    assert "9 limited" in cells  # waits for a limit's slot, beside the outcomes
    assert "4.8 %" in cells  # 2 of the 42 that ended their job (waits did not end it)
    assert 'http-equiv="refresh"' not in text
    assert 'http-equiv="refresh" content="5"' in Client(server).get("/").text


def test_the_mount_example_of_the_docs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/web.md's mount example, served by uvicorn as written."""
    import threading

    import uvicorn

    from tests.docs_blocks import DOCS, marked_block

    monkeypatch.chdir(tmp_path)
    scope: dict[str, Any] = {}
    exec(compile(marked_block(DOCS / "web.md", "web-mount-example"), "web.md", "exec"), scope)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(scope["application"], host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            threading.Event().wait(0.05)
        client = Client(f"http://127.0.0.1:{port}")
        page = client.get("/reliable/dead-letters")
        assert page.status == 200
        assert 'href="/reliable/static/style.css"' in page.text
        assert client.get("/reliable/static/style.css").status == 200
        assert client.get("/dead-letters").status == 404
        assert (tmp_path / "reliable.sqlite3").exists()
    finally:
        server.should_exit = True
        thread.join(10)


def test_workers_page_shows_the_progress_of_jobs_with_a_heartbeat(server: str, store: Any) -> None:
    """From the store, with or without a worker answering: a job that beats shows its
    progress and details; one whose worker stopped beating long ago is marked stale."""
    import sqlalchemy as sa

    from celery_reliable.store.schema import progress
    from celery_reliable.store.timeutil import utcnow

    started = utcnow()
    store.progress.beat(
        "job-live",
        "web.import_rows",
        "w1@host",
        101,
        started,
        0.42,
        {"row": 4200, "note": "<b>x</b>"},
    )
    store.progress.beat("job-gone", "web.import_rows", "w2@host", 202, started, 0.1, {"row": 7})
    with store.engine.begin() as connection:  # w2 died ten minutes ago
        connection.execute(
            sa.update(progress)
            .where(progress.c.task_id == "job-gone")
            .values(beat_at=utcnow() - timedelta(minutes=10))
        )
    try:
        page = Client(server).get("/workers")
        assert page.status == 200
        section = re.search(
            r'<section class="panel" id="heartbeats">(.*?)</section>', page.text, re.S
        )
        assert section is not None
        rows = dict(re.findall(r'<tr id="beat-\d+" class="(\w+)">(.*?)</tr>', section[1], re.S))
        assert set(rows) == {"beating", "stale"}
        live, gone = rows["beating"], rows["stale"]
        assert "job-live" in live and '<progress max="1" value="0.42"></progress> 42%' in live
        assert "w1@host" in live and '"row": 4200' in live
        assert "<b>x</b>" not in page.text  # details are data, never markup
        assert "job-gone" in gone and "its worker may be gone" in gone
    finally:
        store.progress.finish("job-live")
        store.progress.finish("job-gone")
    assert "None: no job with a" in Client(server).get("/workers").text


def test_cancel_a_job_asks_first_and_refuses_a_post_without_the_csrf_token(
    server: str, store: Any
) -> None:
    """The Cancel button's form: a POST without the CSRF token (or from another site)
    changes nothing; with it, a confirmation saying what will happen, then the cancel,
    kept in the store and listed on the workers page."""
    job = "job-" + os.urandom(4).hex()
    client = Client(server)
    assert client.get("/workers").status == 200
    token = client.csrf()
    act = {"task_id": job, "task": "web.ship", "confirmed": "1", "reason": "wrong order"}
    refused = [
        client.post("/workers/cancel", act),  # no token
        client.post("/workers/cancel", {**act, "csrf_token": "x" * 43}),  # wrong token
        client.post(
            "/workers/cancel",
            {**act, "csrf_token": token},
            headers={"Origin": "http://evil.example"},
        ),
        Client(server).post("/workers/cancel", {**act, "csrf_token": token}),  # no cookie
    ]
    assert [answer.status for answer in refused] == [403] * 4
    assert "CSRF token missing or wrong" in refused[0].text
    assert store.cancels.get(job) is None
    assert client.get(f"/workers/cancel?task_id={job}").status == 405

    asked = client.post(
        "/workers/cancel", {"task_id": job, "task": "web.ship", "csrf_token": token}
    )
    assert asked.status == 200, asked.text
    assert f'Cancel job <span class="mono">{job}</span>' in asked.text
    assert "<strong>Not started</strong>: it ends CANCELLED when a worker would start it." in (
        asked.text
    )
    assert store.cancels.get(job) is None  # asking changes nothing

    cancelled = client.post("/workers/cancel", {**act, "csrf_token": token})
    assert cancelled.status == 303 and cancelled.headers["Location"].endswith("/workers")
    row = store.cancels.get(job)
    assert row is not None and row.reason == "wrong order"
    assert row.requested_by == "web:localhost"
    page = client.get("/workers").text
    assert f"cancelled {job}: it ends CANCELLED when a worker would start it" in page
    section = re.search(r'<section class="panel" id="cancels">(.*?)</section>', page, re.S)
    assert section is not None and job in section[1] and "wrong order" in section[1]


def test_pause_and_resume_ask_first_and_refuse_a_post_without_the_csrf_token(
    server: str, store: Any
) -> None:
    """The Pause and Resume buttons' forms: a POST without the CSRF token (or from
    another site) changes nothing; with it, a confirmation saying what will happen,
    then the pause, kept in the store and listed on the overview, then the resume."""
    client = Client(server)
    page = client.get("/?refresh=0")
    assert page.status == 200
    assert 'id="pause-task-web.ship"' in page.text and 'id="pauses"' not in page.text
    token = client.csrf()
    act = {"kind": "task", "name": "web.ship", "confirmed": "1", "reason": "carrier down"}
    for path in ("/pauses/pause", "/pauses/resume"):
        refused = [
            client.post(path, act),  # no token
            client.post(path, {**act, "csrf_token": "x" * 43}),  # wrong token
            client.post(
                path, {**act, "csrf_token": token}, headers={"Origin": "http://evil.example"}
            ),
            Client(server).post(path, {**act, "csrf_token": token}),  # no cookie
        ]
        assert [answer.status for answer in refused] == [403] * 4, path
        assert "CSRF token missing or wrong" in refused[0].text
        assert client.get(f"{path}?kind=task&name=web.ship").status == 405
    assert store.pauses.get("task", "web.ship") is None

    asked = client.post("/pauses/pause", {"kind": "task", "name": "web.ship", "csrf_token": token})
    assert asked.status == 200, asked.text
    assert "<h1>Pause task web.<wbr>ship?</h1>" in asked.text
    assert "No worker starts it from now on" in asked.text
    assert store.pauses.get("task", "web.ship") is None  # asking changes nothing

    paused = client.post("/pauses/pause", {**act, "csrf_token": token})
    assert paused.status == 303 and paused.headers["Location"].endswith("/")
    row = store.pauses.get("task", "web.ship")
    assert row is not None and row.reason == "carrier down"
    assert row.paused_by == "web:localhost"
    page = client.get("/?refresh=0")
    assert "paused task web.ship: no worker starts it from now on" in page.text
    section = re.search(r'<section class="panel" id="pauses">(.*?)</section>', page.text, re.S)
    assert section is not None and "carrier down" in section[1]
    assert 'id="resume-task-web.ship"' in section[1]

    # A task the app does not have, or no kind: nothing is written.
    for bad in ({"kind": "task", "name": "web.shipp"}, {"kind": "worker", "name": "w1"}):
        answer = client.post("/pauses/pause", {**bad, "confirmed": "1", "csrf_token": token})
        assert answer.status == 400, answer.text
    assert "no task named &#39;web.shipp&#39;; did you mean &#39;web.ship&#39;?" in (
        client.post(
            "/pauses/pause",
            {"kind": "task", "name": "web.shipp", "confirmed": "1", "csrf_token": token},
        ).text
    )
    assert [p.key for p in store.pauses.all()] == [("task", "web.ship")]

    confirm = client.post(
        "/pauses/resume", {"kind": "task", "name": "web.ship", "csrf_token": token}
    )
    assert confirm.status == 200 and "Paused by web:localhost since " in confirm.text
    resumed = client.post("/pauses/resume", {**act, "csrf_token": token})
    assert resumed.status == 303
    assert store.pauses.get("task", "web.ship") is None
    assert "resumed task web.ship: workers start it again" in client.get("/?refresh=0").text


def test_overview_shows_each_periodic_entry_s_last_and_next_run(server: str, store: Any) -> None:
    """The app's beat_schedule, the newest slot published of each entry (the rows a
    beat writes, written here), and the next due time from the schedule."""
    due = utcnow().replace(microsecond=0) - timedelta(minutes=2)
    due = due.replace(second=0)
    runs = store.beat_runs
    assert runs.claim("charge-every-minute", due, task_name="web.charge", task_id="slot-1",
                      by="host:1", lease_seconds=10)  # fmt: skip
    runs.published("charge-every-minute", due)
    later = due + timedelta(minutes=1)
    assert runs.claim("charge-every-minute", later, task_name="web.charge", task_id="slot-2",
                      by="host:2", lease_seconds=10)  # fmt: skip
    page = Client(server).get("/?refresh=0")
    assert page.status == 200
    section = page.text.split('id="periodic"', 1)[1].split("</section>", 1)[0]
    row = section.split('id="periodic-charge-every-minute"', 1)[1].split("</tr>", 1)[0]
    assert "every minute (aligned to the epoch, UTC)" in row
    assert f"{due:%Y-%m-%d %H:%M:%S}" in row and "slot-1" in row
    assert f"claimed {later:%Y-%m-%d %H:%M:%S}" in row  # published by nobody yet
    nightly = section.split('id="periodic-nightly-shipments"', 1)[1].split("</tr>", 1)[0]
    assert "crontab 30 2 * * * (UTC)" in nightly and "none yet" in nightly
    assert ":30:00" in nightly.rsplit("<td", 1)[1]  # the next due time
    assert "each due time published once by" in section


def test_overview_shows_the_outbox_s_depth_and_oldest_age(
    env: dict[str, str], server: str, store: Any
) -> None:
    """Two messages committed with publish_in (no relay runs here), the oldest written
    90 s ago: the overview shows them, and how long the oldest has waited; on SQLite the
    relays poll and leave no trace, so how many run is not known. Then none waits."""
    import sqlalchemy as sa

    from celery_reliable.outbox import publish_in
    from celery_reliable.store.schema import outbox

    app = load_app(env).app
    written = utcnow().replace(microsecond=0) - timedelta(seconds=90)
    with store.engine.begin() as connection:
        for order in (1, 2):
            publish_in(connection, app.signature("web.ship", (order,)))
        connection.execute(sa.update(outbox).values(created_at=written))

    def panel() -> str:
        page = Client(server).get("/?refresh=0")
        assert page.status == 200, page.text[:500]
        return page.text.split('id="outbox"', 1)[1].split("</section>", 1)[0]

    try:
        shown = panel()
        assert '<td class="num" id="outbox-depth">2</td>' in shown
        assert f"{written:%Y-%m-%d %H:%M:%S}" in shown
        age = re.search(r'id="outbox-age"><span class="bad">([^<]*)</span>', shown)
        assert age is not None and re.fullmatch(r"1m 3[0-4]s", age[1]), shown
        assert 'id="outbox-relays"><span class="quiet"' in shown and "not known" in shown
    finally:
        with store.engine.begin() as connection:
            connection.execute(sa.delete(outbox))
    shown = panel()
    assert '<td class="num" id="outbox-depth">0</td>' in shown
    assert 'id="outbox-age"><span class="quiet">-</span>' in shown
