"""``make screenshots``: docs/web.md's pictures, taken of the demo shop's web view.

The demo runs first, here, in a directory of its own (``/srv/shop``, or ``/tmp/shop``
when ``/srv`` is not writable; ``SCREENSHOTS_ROOT`` overrides): a copy of the shop, and
a Python environment whose paths lie under it (the interpreter, and this checkout's
packages through symbolic links). So the tracebacks the dead letters keep name
``/srv/shop/...`` files, never this machine's checkout or home, and the per-minute
chart shows the run that just ended. Then, with a worker of the shop running, the shop
renews its tea club's subscriptions in one batch (the demo makes none): its members
succeed, retry and succeed, repeat a charge (a duplicate), are declined, have no
address to mail and are cancelled, and the worker runs them until the batch completes;
and one declined charge of the demo is retried from the dead letter's page: it is
declined again, so the listing shows a retry followed to the dead letter it ended in.
Each page is opened in headless Chromium at 1366 px and written to
``docs/images/web-*.png``; a page whose HTML names this checkout or the home directory
stops the run.

The workers page is not taken here (the demo's worker has stopped): its picture comes
from ``tests/integration/test_web_browser.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_until
from tests.support.web import ROOT, chromium, screenshot, web_server

SHOP = ROOT / "examples" / "django_app"
IMAGES = ROOT / "docs" / "images"
#: Left in the directory it builds: only a directory that has it is ever deleted.
MARKER = ".celery-reliable-screenshots"
#: The batch the batches pages show, published through the shop's own code by its
#: interpreter: 9 renewals (a charge and a confirmation each, one charge sent twice).
#: A timeout retried, a declined card and an address no mail reaches end as the
#: demo's customers do; the subscriber who left is deleted before any job runs.
RENEWALS = """
import django

django.setup()
from celery_reliable import Batch
from orders.models import Order
from orders.services import place_order
from orders.tasks import charge_payment
from shop.celery import app

subscribers = [f"club{n}@example.com" for n in range(5)] + [
    "slow-club@example.com", "declined-club@example.com", "not an address",
    "left-the-club@example.com",
]
with Batch(description="tea club renewals", app=app) as batch:
    orders = [place_order(email=e, sku="tea", amount_cents=1200) for e in subscribers]
    charge_payment.delay(orders[0].pk)  # the gateway's webhook, retried
Order.objects.filter(email="left-the-club@example.com").delete()
print(batch.id)
"""
#: What no page may show: where this checkout and this user's home are.
PRIVATE = tuple({str(ROOT), str(Path.home()), str(Path(sys.base_prefix).resolve())})


def neutral_root() -> Path:
    given = os.environ.get("SCREENSHOTS_ROOT")
    if given:
        return Path(given)
    return Path("/srv/shop") if os.access("/srv", os.W_OK) else Path("/tmp/shop")


def build(root: Path) -> Path:
    """``root/app`` (the shop), ``root/venv`` and ``root/python``; returns the venv's
    interpreter."""
    if root.exists():
        if not (root / MARKER).exists():
            raise SystemExit(f"{root} exists and was not made by this script: not touching it")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / MARKER).write_text("made by tests/web_docs_screenshots.py; deleted by its next run\n")
    shutil.copytree(SHOP, root / "app", ignore=shutil.ignore_patterns("data", "__pycache__"))
    # The interpreter, through a link: the standard library's frames read root/python/...
    (root / "python").symlink_to(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    venv = root / "venv"
    packages = venv / "lib" / version / "site-packages"
    packages.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python").symlink_to(root / "python" / "bin" / version)
    (venv / "pyvenv.cfg").write_text(
        f"home = {root / 'python' / 'bin'}\ninclude-system-site-packages = false\n"
        f"version = {'.'.join(map(str, sys.version_info[:3]))}\n"
    )
    # This checkout's packages, each through a link; celery_reliable as if installed
    # there (not through the editable install's finder, which names the checkout).
    installed = Path(sysconfig.get_paths()["purelib"])
    for entry in installed.iterdir():
        if not entry.name.startswith("__editable__"):
            (packages / entry.name).symlink_to(entry)
    (packages / "celery_reliable").symlink_to(ROOT / "celery_reliable")
    return venv / "bin" / "python"


def shop_env(root: Path) -> dict[str, str]:
    """The environment of the shop's processes: nothing that names this checkout."""
    keep = {"PATH", "LANG", "LC_ALL", "TZ", "TERM"}
    env = {name: value for name, value in os.environ.items() if name in keep}
    env.update(
        {
            "HOME": str(root),
            "PYTHONPATH": str(root / "app"),
            "DJANGO_SETTINGS_MODULE": "shop.settings",
            "SHOP_DATA_DIR": str(root / "app" / "data" / "demo"),
        }
    )
    return env


def main() -> int:
    root = neutral_root()
    python = build(root)
    env = shop_env(root)
    print(f"the demo, in {root}", flush=True)
    subprocess.run([str(python), "demo.py"], cwd=root / "app", env=env, check=True)
    with web_server("shop", env, cwd=root / "app", python=str(python)) as server:
        html = page(server.url + "/dead-letters")
        if not re.findall(r'<tr id="dead-(\d+)">', html):
            print("no dead letter in the demo's store", file=sys.stderr)
            return 1
        driver = chromium()
        try:
            with shop_worker(python, root, env):
                batch = renew_the_tea_club(server.url, python, root, env)
                retry_one_declined_charge(driver, server.url)
            # The detail of an exhausted one shows the retries that led to it.
            html = page(server.url + "/dead-letters?outcome=exhausted")
            exhausted = re.findall(r'<tr id="dead-(\d+)">', html)
            for path, name in (
                ("/?refresh=0", "web-overview"),
                ("/dead-letters", "web-dead-letters"),
                (f"/dead-letters/{exhausted[0]}", "web-dead-letter"),
                ("/batches", "web-batches"),
                (f"/batches/{batch}", "web-batch"),
                ("/receipts", "web-receipts"),
                ("/locks", "web-locks"),
                ("/gates", "web-gates"),
            ):
                private(page(server.url + path), path)
                driver.get(server.url + path)
                print(screenshot(driver, name, IMAGES, max_height=1100).relative_to(ROOT))
            driver.get(server.url + "/dead-letters")
            click(driver, "retry-matching", lambda d: h1(d).startswith("Retry"))
            print(screenshot(driver, "web-confirm", IMAGES, max_height=1100).relative_to(ROOT))
        finally:
            driver.quit()
    return 0


@contextlib.contextmanager
def shop_worker(python: Path, root: Path, env: dict[str, str]) -> Iterator[None]:
    """A worker of the shop (solo pool) while the block runs."""
    worker = subprocess.Popen(
        [str(python), "-m", "celery", "-A", "shop", "worker", "-P", "solo",
         "--without-gossip", "--without-mingle", "-n", "demo@%h", "--loglevel=WARNING"],
        cwd=root / "app", env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield
    finally:
        worker.send_signal(signal.SIGTERM)  # warm shutdown: its outcome history is written
        worker.wait(30)


def renew_the_tea_club(site: str, python: Path, root: Path, env: dict[str, str]) -> str:
    """Publish :data:`RENEWALS`' batch and wait until the worker has completed it;
    returns its id."""
    done = subprocess.run(
        [str(python), "-c", RENEWALS], cwd=root / "app", env=env,
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    batch = done.stdout.split()[-1]
    completed = '<dd id="state"><span class="count succeeded">completed</span>'
    wait_until(
        lambda: completed in page(f"{site}/batches/{batch}"),
        f"batch {batch} to complete",
        timeout=90,
        interval=0.5,
    )
    return batch


def retry_one_declined_charge(driver: Any, site: str) -> None:
    """Retry a declined charge of the demo from its page while a worker of the shop
    runs: declined again, it comes back as a dead letter that says whose retry it was."""
    html = page(site + "/dead-letters?task=orders.tasks.charge_payment&outcome=discarded")
    declined = re.findall(r'<tr id="dead-(\d+)">', html)[-1]
    driver.get(f"{site}/dead-letters/{declined}")
    click(driver, "retry-one", lambda d: h1(d) == "Retry 1 dead letter?")
    click(driver, "confirm", lambda d: h1(d) == f"Dead letter {declined}")
    back = f'retry of <a href="/dead-letters/{declined}">'
    wait_until(
        lambda: back in page(site + "/dead-letters"),
        f"the retry of dead letter {declined} to leave a dead letter",
        timeout=60,
        interval=0.5,
    )


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return str(answer.read().decode())


def private(html: str, path: str) -> None:
    for where in PRIVATE:
        if where in html:
            raise SystemExit(f"{path} shows {where}: the pictures would too")


def h1(driver: Any) -> str:
    return str(driver.find_element("tag name", "h1").text)


def click(driver: Any, element_id: str, arrived: Any) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("id", element_id).click()
    # The page it leaves may still be there when the wait starts, and gone mid-read.
    WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,)).until(arrived)


if __name__ == "__main__":
    sys.exit(main())
