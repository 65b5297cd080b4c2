"""``make screenshots``: docs/web.md's pictures, taken of the demo shop's web view.

Run after ``make demo`` (the Makefile target does both): serves ``celery -A shop
reliable web`` on the demo's data, opens each page in headless Chromium at 1366 px and
writes ``docs/images/web-*.png``.
"""

from __future__ import annotations

import re
import sys
import urllib.request

from tests.web_support import ROOT, chromium, screenshot, web_server

SHOP = ROOT / "examples" / "django_app"
IMAGES = ROOT / "docs" / "images"


def main() -> int:
    from selenium.webdriver.support.ui import WebDriverWait

    env = {"SHOP_DATA_DIR": str(SHOP / "data" / "demo"), "DJANGO_SETTINGS_MODULE": "shop.settings"}
    with web_server("shop", env, cwd=SHOP) as server:
        with urllib.request.urlopen(server.url + "/dead-letters", timeout=30) as page:
            html = page.read().decode()
        ids = re.findall(r'<tr id="dead-(\d+)">', html)
        # The detail of an exhausted one shows the retries that led to it.
        exhausted = re.findall(r'<tr id="dead-(\d+)">(?:(?!</tr>).)*exhausted', html, re.S)
        if not ids:
            print("no dead letter in the demo's store: run `make demo` first", file=sys.stderr)
            return 1
        driver = chromium()
        try:
            for path, name in (
                ("/?refresh=0", "web-overview"),
                ("/dead-letters", "web-dead-letters"),
                (f"/dead-letters/{(exhausted or ids)[0]}", "web-dead-letter"),
                ("/receipts", "web-receipts"),
                ("/locks", "web-locks"),
                ("/gates", "web-gates"),
            ):
                driver.get(server.url + path)
                print(screenshot(driver, name, IMAGES, max_height=1100).relative_to(ROOT))
            driver.get(server.url + "/dead-letters")
            driver.find_element("id", "retry-matching").click()
            WebDriverWait(driver, 20).until(
                lambda d: d.find_element("tag name", "h1").text.startswith("Retry")
            )
            print(screenshot(driver, "web-confirm", IMAGES, max_height=1100).relative_to(ROOT))
        finally:
            driver.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
