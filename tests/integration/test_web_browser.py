"""The web view in a real browser (Debian's headless Chromium, driven by Selenium)
against ``celery reliable web``, a real worker, Redis and the SQLite store: a task that
fails leaves a dead letter that is found, inspected, retried (the task runs again) and
purged through the pages; a filtered set is retried in bulk. Each page is photographed
at laptop width (``.cache/web-screenshots``; docs/web.md shows them)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis

from tests.helpers import dead_letter_fields
from tests.integration.test_web import load_app
from tests.support.waiting import wait_until
from tests.support.web import chromium, screenshot, web_env, web_server
from tests.support.workers import embedded_worker

pytestmark = [pytest.mark.integration, pytest.mark.browser]

APP = "tests.support.apps.web"


@pytest.fixture(scope="module")
def env(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return web_env(redis_url, tmp_path_factory.mktemp("web-browser"))


@pytest.fixture(scope="module")
def shop(env: dict[str, str]) -> Iterator[Any]:
    from tests.helpers import ready_store

    module = load_app(env)
    ready_store(module.app)
    with embedded_worker(module.app):
        yield module


@pytest.fixture(scope="module")
def site(env: dict[str, str], shop: Any) -> Iterator[str]:
    with web_server(APP, env) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def broker(shop: Any) -> redis.Redis:
    return redis.Redis.from_url(shop.BROKER, decode_responses=True)


def letters_of(shop: Any, task_name: str) -> list[Any]:
    from celery_reliable.store import store_for
    from celery_reliable.store.dead_letters import DeadLetterFilter

    store = store_for(shop.app)
    return store.dead_letters.page(DeadLetterFilter(task_name=task_name), 100)


def click(browser: Any, element_id: str, *, navigates: bool = True) -> None:
    """Click, and wait for the page it leads to (a form posted, a link followed)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    WebDriverWait(browser, 20).until(
        expected_conditions.element_to_be_clickable((By.ID, element_id))
    ).click()
    if navigates:
        left(browser, page)
        loaded(browser)


def left(browser: Any, page: Any) -> None:
    """Wait until the browser has left the document ``page`` belongs to. Chromedriver
    answers a question about a node of a document being replaced with "Node with given
    id does not belong to the document" (not a stale-element error) for a moment: the
    page was left all the same."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def gone(_: Any) -> bool:
        try:
            page.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    WebDriverWait(browser, 20).until(gone)


def loaded(browser: Any) -> None:
    """Wait until the page the browser is on has loaded: an element found while the
    next document is still being committed can be gone when it is clicked."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 20).until(
        lambda driver: driver.execute_script("return document.readyState") == "complete"
    )


def text_of(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(browser.find_element(By.ID, element_id).text)


def test_a_dead_letter_is_found_inspected_retried_and_purged(
    shop: Any, site: str, browser: Any, broker: redis.Redis
) -> None:
    from selenium.webdriver.common.by import By

    broker.sadd(shop.REFUSED, "charge:101")
    shop.charge.delay(101)
    [letter] = wait_until(lambda: letters_of(shop, "web.charge"), "the dead letter")

    browser.get(f"{site}/dead-letters")
    row = browser.find_element(By.ID, f"dead-{letter.id}")
    assert "web.charge" in row.text and "discarded" in row.text
    assert "card declined for order 101" in row.text
    screenshot(browser, "dead-letters")

    page = browser.find_element(By.TAG_NAME, "html")
    row.find_element(By.LINK_TEXT, str(letter.id)).click()
    left(browser, page)
    loaded(browser)
    assert text_of(browser, "args").replace(" ", "").replace("\n", "") == "[101]"
    assert "GatewayRefused: card declined for order 101" in text_of(browser, "exception")
    assert "raise GatewayRefused" in text_of(browser, "traceback")
    assert text_of(browser, "retried") == "no"
    screenshot(browser, "dead-letter")

    # The gateway takes the card now: retry it from the page.
    broker.srem(shop.REFUSED, "charge:101")
    click(browser, "retry-one")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Retry 1 dead letter?"
    screenshot(browser, "confirm-retry")
    click(browser, "confirm")
    assert "retried 1 dead letter" in browser.find_element(By.CLASS_NAME, "notice").text
    wait_until(lambda: "101" in broker.lrange(shop.CHARGED, 0, -1), "the retried charge to run")
    retried = letters_of(shop, "web.charge")[0]
    assert retried.retried_task_id is not None
    assert retried.retried_task_id in text_of(browser, "retried")

    click(browser, "purge-one")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Purge 1 dead letter?"
    click(browser, "confirm")
    assert "purged 1 dead letter" in browser.find_element(By.CLASS_NAME, "notice").text
    assert browser.find_elements(By.ID, f"dead-{letter.id}") == []
    assert letters_of(shop, "web.charge") == []


def test_a_filtered_set_is_retried_in_bulk_and_a_selection_purged(
    shop: Any, site: str, browser: Any, broker: redis.Redis
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    charges, shipments = [201, 202, 203, 204, 205], [301, 302, 303]
    broker.sadd(shop.REFUSED, *(f"charge:{n}" for n in charges))
    broker.sadd(shop.REFUSED, *(f"ship:{n}" for n in shipments))
    for n in charges:
        shop.charge.delay(n)
    for n in shipments:
        shop.ship.delay(n)
    wait_until(
        lambda: len(letters_of(shop, "web.charge")) == 5 and len(letters_of(shop, "web.ship")) == 3,
        "8 dead letters",
    )

    browser.get(f"{site}/dead-letters")
    Select(browser.find_element(By.NAME, "task")).select_by_visible_text("web.charge")
    browser.find_element(By.NAME, "q").send_keys("card declined")
    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    left(browser, page)
    loaded(browser)
    assert text_of(browser, "matching") == "5"
    broker.srem(shop.REFUSED, *(f"charge:{n}" for n in charges))
    click(browser, "retry-matching")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Retry 5 dead letters?"
    assert "task = web.charge" in browser.find_element(By.CLASS_NAME, "confirm").text
    click(browser, "confirm")
    assert "retried 5 dead letters" in browser.find_element(By.CLASS_NAME, "notice").text
    # Back on the same filter.
    assert text_of(browser, "matching") == "5"
    wait_until(
        lambda: {str(n) for n in charges} <= set(broker.lrange(shop.CHARGED, 0, -1)),
        "the 5 retried charges to run",
    )
    assert all(d.retried_at is not None for d in letters_of(shop, "web.charge"))
    assert all(d.retried_at is None for d in letters_of(shop, "web.ship"))

    # Two of the shipments, ticked by hand, purged.
    browser.get(f"{site}/dead-letters?task=web.ship")
    ship_letters = letters_of(shop, "web.ship")
    for letter in ship_letters[:2]:
        browser.find_element(By.CSS_SELECTOR, f'#dead-{letter.id} input[name="id"]').click()
    click(browser, "purge-selected")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Purge 2 dead letters?"
    click(browser, "confirm")
    assert "purged 2 dead letters" in browser.find_element(By.CLASS_NAME, "notice").text
    assert [d.id for d in letters_of(shop, "web.ship")] == [ship_letters[2].id]

    # "Select all" ticks every row shown (the page's only script).
    browser.get(f"{site}/dead-letters")
    click(browser, "select-all", navigates=False)
    boxes = browser.find_elements(By.CSS_SELECTOR, '#letters input[name="id"]')
    assert boxes and all(box.is_selected() for box in boxes)


def test_every_page_at_laptop_width(shop: Any, site: str, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    shop.ship.delay(401)
    wait_until(
        lambda: _overview_counts(browser, site),
        "the overview to count web.ship",
        timeout=30,
        interval=0.1,
    )
    screenshot(browser, "overview")
    depths = browser.find_element(By.CSS_SELECTOR, "#queues table").text
    assert "celery" in depths
    for path, name in (("/receipts", "receipts"), ("/locks", "locks"), ("/gates", "gates")):
        browser.get(site + path)
        # Nothing wider than the window: no horizontal scrolling at 1366 px.
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 1366, (path, width)
        screenshot(browser, name)
    assert "web.charge" in browser.find_element(By.CSS_SELECTOR, "table.gates").text


def _overview_counts(browser: Any, site: str) -> bool:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/?refresh=0")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr")
    return any("web.ship" in row.text and "succeeded" in row.text for row in rows)


def test_workers_show_what_runs_and_what_is_scheduled(
    shop: Any, site: str, browser: Any, broker: redis.Redis
) -> None:
    from selenium.webdriver.common.by import By

    running = shop.slow.delay(601)
    later = shop.ship.apply_async((602,), countdown=300)
    secret = shop.store_card.apply_async(("4111111111111111",), countdown=300)
    try:
        wait_until(
            lambda: _running_on_page(browser, site, running.id),
            "the slow task on the workers page",
            timeout=20,
            interval=0.1,
        )
        page = browser.find_element(By.CSS_SELECTOR, "section.worker").text
        assert "1 running" in page and "2 scheduled" in page
        rows = {
            row.find_element(By.CSS_SELECTOR, "td.mono").text: row
            for row in browser.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr")
        }
        assert "web.slow" in rows[running.id].text and "[601]" in rows[running.id].text
        assert rows[running.id].get_attribute("class") == "running"
        assert (
            "web.ship" in rows[later.id].text
            and rows[later.id].get_attribute("class") == "scheduled"
        )
        assert "redacted" in rows[secret.id].text
        assert "4111111111111111" not in browser.page_source
        screenshot(browser, "workers")
    finally:
        broker.set("web:release:601", 1)
        for result in (later, secret):
            result.revoke()


def _running_on_page(browser: Any, site: str, task_id: str) -> bool:
    from selenium.webdriver.common.by import By

    browser.get(f"{site}/workers")
    return any(
        task_id in row.text and row.get_attribute("class") == "running"
        for row in browser.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr")
    )


def test_a_running_job_is_cancelled_from_the_workers_page(
    shop: Any, site: str, browser: Any, broker: redis.Redis
) -> None:
    """The Cancel button of a job running with a heartbeat: a confirmation saying what
    will happen, a reason, and the job ends CANCELLED at its next beat."""
    from selenium.webdriver.common.by import By

    from celery_reliable.longrun.progress import progress_of

    result = shop.export.delay(701)
    try:
        wait_until(lambda: progress_of(shop.app, result.id), "a beat in the store")
        browser.get(f"{site}/workers")
        row = browser.find_element(By.CSS_SELECTOR, "#heartbeats tbody tr")
        assert result.id in row.text
        click(browser, f"cancel-beat-{result.id}")
        assert result.id in browser.find_element(By.TAG_NAME, "h1").text
        assert "Running with a heartbeat: it runs with a heartbeat" in text_of(browser, "fate")
        assert "it ends CANCELLED at its next beat" in text_of(browser, "fate")
        screenshot(browser, "cancel")
        browser.find_element(By.ID, "reason").send_keys("customer changed the order")
        click(browser, "confirm")
        assert browser.current_url.endswith("/workers")
        notice = browser.find_element(By.CSS_SELECTOR, "p.notice").text
        assert notice.startswith(f"cancelled {result.id}: it runs with a heartbeat"), notice
        info = result.get(timeout=30)
        assert info["outcome"] == "cancelled"
        assert info["reason"] == "cancelled by web:localhost: customer changed the order"
        browser.get(f"{site}/workers")
        listed = browser.find_element(By.ID, "cancels").text
        assert result.id in listed and "customer changed the order" in listed
    finally:
        broker.set("web:release:701", 1)


def test_a_task_is_paused_and_resumed_from_the_overview(
    shop: Any, site: str, browser: Any, broker: redis.Redis
) -> None:
    """The overview's Pause button of a task: a confirmation saying what a pause does,
    a reason, the pause listed; the worker holds the task's job until the Resume
    button, then runs it."""
    from selenium.webdriver.common.by import By

    from celery_reliable.store import store_for

    store = store_for(shop.app)
    assert store is not None

    def held() -> set[str]:
        replies = shop.app.control.broadcast("reliable_held", reply=True, timeout=1.0) or []
        return {entry["id"] for reply in replies for held in reply.values() for entry in held}

    try:
        browser.get(f"{site}/?refresh=0")
        click(browser, "pause-task-web.ship")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Pause task web.ship?"
        assert text_of(browser, "effect").startswith("No worker starts it from now on")
        screenshot(browser, "pause")
        browser.find_element(By.ID, "reason").send_keys("carrier strike")
        click(browser, "confirm")
        notice = browser.find_element(By.CSS_SELECTOR, "p.notice").text
        assert notice.startswith("paused task web.ship: no worker starts it from now on"), notice
        listed = browser.find_element(By.ID, "pauses").text
        assert "web.ship" in listed and "carrier strike" in listed and "web:localhost" in listed
        screenshot(browser, "paused")

        result = shop.ship.delay(801)
        wait_until(lambda: result.id in held(), "the worker to hold the job")
        assert "801" not in broker.lrange(shop.SHIPPED, 0, -1)

        click(browser, "resume-task-web.ship")
        assert text_of(browser, "before").startswith("Paused by web:localhost since ")
        click(browser, "confirm")
        notice = browser.find_element(By.CSS_SELECTOR, "p.notice").text
        assert notice.startswith("resumed task web.ship: workers start it again"), notice
        result.get(timeout=30)
        assert broker.lrange(shop.SHIPPED, 0, -1).count("801") == 1
        assert browser.find_elements(By.ID, "pauses") == []
    finally:
        store.pauses.resume("task", "web.ship")


#: Where the text of each element ``arguments[0]`` selects is broken across lines, as
#: laid out: ``[text, ["c|d", ...]]``, a pair of characters on either side of a break.
LINE_BREAKS = """
const found = [];
for (const element of document.querySelectorAll(arguments[0])) {
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  let text = "", previous = null, top = null;
  const breaks = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    for (let i = 0; i < node.length; i++) {
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + 1);
      const rects = range.getClientRects();
      if (!rects.length || !node.data[i].trim()) continue;
      if (top !== null && rects[0].top > top + 2) breaks.push(previous + "|" + node.data[i]);
      previous = node.data[i];
      top = rects[0].top;
      text += node.data[i];
    }
  }
  found.push([text, breaks]);
}
return found;
"""


def test_task_names_break_only_after_dots_and_underscores(
    shop: Any, site: str, browser: Any
) -> None:
    """A long task name in a narrow column is folded after a ``.`` or a ``_`` (or the
    ``-`` of a periodic entry's name, ``charge-every-minute``), never inside a word, at
    a phone's width and at a laptop's."""
    from celery_reliable.store import store_for

    name = "web.orders.tasks.forget_abandoned_orders_after_thirty_days"
    store = store_for(shop.app)
    letter = store.dead_letters.write(**dead_letter_fields(task_id="names-1", task_name=name))
    folded = 0
    try:
        for width in (420, 1366):
            browser.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            )
            for path in ("/?refresh=0", "/dead-letters", f"/dead-letters/{letter}", "/gates"):
                browser.get(site + path)
                loaded(browser)
                names = browser.execute_script(LINE_BREAKS, ".name")
                if path != "/gates":  # the gates list the app's tasks, not the store's
                    assert name in [text for text, _ in names], (width, path)
                for text, breaks in names:
                    # Each break follows a separator: the words stay whole.
                    assert all(pair[0] in "._-" for pair in breaks), (width, path, text, breaks)
                    folded += len(breaks)
        assert folded, "no name was folded at 420 px: the test saw nothing"
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        # A fresh document for the next test: none of its nodes laid out at 420 px.
        browser.get("about:blank")
        store.dead_letters.purge(ids=[letter])


def test_date_filters_take_the_iso_times_the_table_shows(
    shop: Any, site: str, browser: Any
) -> None:
    """From and To are typed as the table writes times (``2026-11-20 10:15``), shown
    back as typed; the browser itself refuses ``11/20/2026`` before sending it."""
    from selenium.webdriver.common.by import By
    from sqlalchemy import update

    from celery_reliable.store import store_for
    from celery_reliable.store.schema import dead_letters

    store = store_for(shop.app)
    ids = []
    for n, moment in enumerate(("2026-11-20 10:15:30", "2026-11-21 08:00:00")):
        dead_id = store.dead_letters.write(
            **dead_letter_fields(task_id=f"dated-{n}", task_name="web.dated", args=[n])
        )
        with store.engine.begin() as connection:
            connection.execute(
                update(dead_letters)
                .where(dead_letters.c.id == dead_id)
                .values(created_at=datetime.fromisoformat(moment))
            )
        ids.append(dead_id)
    try:
        browser.get(f"{site}/dead-letters?task=web.dated")
        loaded(browser)
        shown = browser.find_element(By.CSS_SELECTOR, f"#dead-{ids[0]} td.nowrap").text
        assert shown == "2026-11-20 10:15:30"
        for field in ("from", "to"):
            box = browser.find_element(By.NAME, field)
            assert box.get_attribute("placeholder") == "YYYY-MM-DD HH:MM"
            box.send_keys(shown[:16])
        click_filter(browser)
        assert text_of(browser, "matching") == "1"
        assert browser.find_elements(By.ID, f"dead-{ids[0]}")
        for field in ("from", "to"):
            box = browser.find_element(By.NAME, field)
            assert box.get_attribute("value") == "2026-11-20 10:15"
            # What the page shows in the box is what was typed, nothing in another order.
            assert browser.execute_script("return arguments[0].value", box) == "2026-11-20 10:15"

        box = browser.find_element(By.NAME, "from")
        box.clear()
        box.send_keys("11/20/2026")
        assert browser.execute_script("return arguments[0].checkValidity()", box) is False
        assert "YYYY-MM-DD" in browser.execute_script("return arguments[0].title", box)
        before = browser.current_url
        # The browser checks the form before it would submit it: its "invalid" event on
        # the box is the positive sign that this check ran and refused.
        browser.execute_script(
            "window.refused = false; window.submitted = false;"
            "arguments[0].addEventListener('invalid', () => { window.refused = true; });"
            "arguments[0].form.addEventListener('submit', () => { window.submitted = true; });",
            box,
        )
        browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
        wait_until(
            lambda: browser.execute_script("return window.refused === true"),
            "the browser to refuse the form",
        )
        assert browser.execute_script("return window.submitted") is False
        assert browser.current_url == before, "the browser sent a date it should refuse"
        screenshot(browser, "dead-letters-dated")
    finally:
        store.dead_letters.purge(ids=ids)


def click_filter(browser: Any) -> None:
    from selenium.webdriver.common.by import By

    page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    left(browser, page)
    loaded(browser)


def test_a_batch_is_followed_from_its_progress_bar_to_a_members_dead_letter(
    shop: Any, site: str, browser: Any, broker: redis.Redis
) -> None:
    """A real batch of three charges, one declined, run by the worker: the listing draws
    its bar two thirds green and one third red, its page says the callback fired and
    links the declined member's dead letter, which opens."""
    import json

    from selenium.webdriver.common.by import By

    from celery_reliable import Batch

    broker.sadd(shop.REFUSED, "charge:903")
    with Batch(on_complete=shop.summarize.s(), description="orders <901-903>") as batch:
        for order in (901, 902, 903):
            shop.charge.delay(order)
    [summary] = wait_until(
        lambda: [
            s
            for s in map(json.loads, broker.lrange(shop.SUMMARIES, 0, -1))
            if s["batch"] == batch.id
        ],
        "the batch's on_complete",
    )
    assert summary["outcomes"]["succeeded"] == 2 and summary["outcomes"]["discarded"] == 1
    [letter] = [d for d in letters_of(shop, "web.charge") if d.task_id in summary["failed"]]

    browser.get(f"{site}/batches")
    row = browser.find_element(By.ID, f"batch-{batch.id}")
    assert "completed" in row.text and "3/3 · 100%" in row.text
    assert "orders <901-903>" in row.text  # the description as text
    # The bar as drawn: green over two thirds of its width, red over the last third.
    bar = row.find_element(By.CSS_SELECTOR, "svg.progress")
    ok = row.find_element(By.CSS_SELECTOR, "svg.progress rect.ok")
    bad = row.find_element(By.CSS_SELECTOR, "svg.progress rect.error")
    width = bar.rect["width"]
    assert abs(ok.rect["width"] - width * 2 / 3) <= 1.5, (ok.rect, width)
    assert abs(bad.rect["width"] - width / 3) <= 1.5 and bad.rect["x"] > ok.rect["x"]
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1366
    screenshot(browser, "batches")

    page = browser.find_element(By.TAG_NAME, "html")
    row.find_element(By.LINK_TEXT, batch.id).click()
    left(browser, page)
    loaded(browser)
    callback = text_of(browser, "callback-on_complete")
    assert f"{batch.id}-on_complete" in callback and "fired: succeeded" in callback
    member = browser.find_element(By.ID, f"member-{letter.task_id}")
    assert "discarded" in member.text
    screenshot(browser, "batch")
    page = browser.find_element(By.TAG_NAME, "html")
    member.find_element(By.CSS_SELECTOR, "a.dead-letter").click()
    left(browser, page)
    loaded(browser)
    assert browser.find_element(By.TAG_NAME, "h1").text == f"Dead letter {letter.id}"
    assert "card declined for order 903" in text_of(browser, "exception")
