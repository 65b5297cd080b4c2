"""celery_reliable's web view mounted beside Django in the shop's ASGI app
(``shop/asgi.py``), served by uvicorn as a team would run it: both answer, and the
view's links, static files, cookie and redirects stay under ``/reliable/``."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest
import sqlalchemy as sa

HERE = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served(tmp_path):
    env = {**os.environ, "SHOP_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "shop.settings"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--verbosity", "0"], cwd=HERE, env=env, check=True
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "shop.asgi:application",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        assert server.poll() is None, server.stdout.read().decode()
        assert time.monotonic() < deadline, "uvicorn did not listen"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}", tmp_path / "shop.sqlite3"
    finally:
        server.terminate()
        server.wait(10)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_the_web_view_is_mounted_beside_django(served):
    url, database = served
    jar = CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect())

    def get(path):
        with browser.open(url + path, timeout=30) as response:
            return response.status, response.read().decode()

    # Django's own endpoint still answers at the root.
    placed = browser.open(
        url + "/orders",
        urllib.parse.urlencode(
            {"email": "a@example.com", "sku": "mug", "amount_cents": 900}
        ).encode(),
        timeout=30,
    )
    assert placed.status == 201

    status, overview = get("/reliable/")
    assert status == 200
    # Names may fold after their dots and underscores: the page marks where (<wbr>).
    shown = overview.replace("<wbr>", "")
    for task in ("orders.tasks.charge_payment", "orders.tasks.send_order_confirmation"):
        assert task in shown
    assert 'href="/reliable/static/style.css"' in overview
    assert 'href="/reliable/dead-letters"' in overview
    assert get("/reliable/static/style.css")[0] == 200
    assert get("/reliable/gates")[0] == 200
    [cookie] = [c for c in jar if c.name.startswith("reliable_csrf")]
    assert cookie.path == "/reliable" and cookie.name != "reliable_csrf"  # its own name

    # A dead letter in Django's database, purged through the mounted view.
    from celery_reliable.store.dead_letters import DeadLetters
    from celery_reliable.store.schema import dead_letters

    row = DeadLetters.build_row(
        task_id="t-1",
        task_name="orders.tasks.charge_payment",
        queue="celery",
        args=[1],
        kwargs={},
        options={},
        redact=False,
        outcome="discarded",
        exc_type="CardDeclined",
        exc_message="declined",
        traceback=None,
        reason="CardDeclined: declined",
        attempts=1,
    )
    engine = sa.create_engine(f"sqlite:///{database}")
    with engine.begin() as connection:
        letter = connection.execute(
            sa.insert(dead_letters).values(**row).returning(dead_letters.c.id)
        ).scalar_one()
    status, page = get(f"/reliable/dead-letters/{letter}")
    assert status == 200 and "CardDeclined: declined" in page
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"do": "purge-one", "id": letter, "confirmed": "1", "csrf_token": token}
    ).encode()
    try:
        browser.open(url + "/reliable/dead-letters/act", form, timeout=30)
        raise AssertionError("expected a 303")
    except urllib.error.HTTPError as answer:
        assert answer.code == 303
        assert answer.headers["Location"] == "/reliable/dead-letters"
    with engine.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(dead_letters)).scalar() == 0
        )
    engine.dispose()
