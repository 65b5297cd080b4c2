"""Each task's outcomes, one execution at a time (perform_task), or drained to the end.

The tasks keep their receipts and dead letters in Django's database, written by
connections of their own: these tests commit (``transaction=True``) and the
``reliable_db`` fixture empties the store's tables for each test.
"""

import socket
import time
from datetime import timedelta

import pytest
from django.db import OperationalError, connection
from django.utils import timezone
from orders.models import GatewayCall, Order, Payment, Stock
from orders.services import place_order
from orders.tasks import (
    charge_payment,
    forget_abandoned_orders,
    send_order_confirmation,
    sync_inventory,
)
from shop.celery import app

from celery_reliable import Outcome
from celery_reliable.gates import check
from celery_reliable.testing import all_enqueued, assert_enqueued, drain, perform_task

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("reliable_db")]


@pytest.fixture
def order():
    return Order.objects.create(email="ada@example.com", sku="tea", amount_cents=1200)


@pytest.fixture
def database_gone(tmp_path):
    """The shop's database goes away, as when its server restarts: Django's connection
    is closed, and the next query reconnects to where no database is (a file in a
    directory that does not exist; a port nothing listens on). The driver's own error
    is what the task meets: Django's OperationalError. celery_reliable's store keeps
    the connections it opened before (its dead letters are still written)."""
    before = connection.settings_dict
    connection.close()
    if connection.vendor == "sqlite":
        gone = {**before, "NAME": str(tmp_path / "gone" / "shop.sqlite3")}
    else:
        with socket.socket() as probe:  # a port that was free a moment ago
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        gone = {**before, "HOST": "127.0.0.1", "PORT": str(port)}
    connection.settings_dict = gone
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict = before


# --- charge_payment -------------------------------------------------------------------


def test_a_charge_is_taken_once_however_often_it_runs(order):
    first = perform_task(charge_payment, args=(order.pk,))
    again = perform_task(charge_payment, args=(order.pk,))

    assert_enqueued(sync_inventory, args=("tea",))  # published by the charge
    assert first.outcome is Outcome.SUCCEEDED
    assert again.outcome is Outcome.DUPLICATE
    assert again.result == first.result == f"ch_order-{order.pk}"
    assert Payment.objects.filter(order=order).count() == 1
    assert GatewayCall.objects.filter(order_id=order.pk).count() == 1
    order.refresh_from_db()
    assert order.status == Order.PAID


def test_a_gateway_timeout_is_retried_then_exhausted(order, settings, reliable_db):
    settings.SHOP_GATEWAY_FAULTS = {order.email: ["timeout"] * 10}

    first = perform_task(charge_payment, args=(order.pk,))
    last = perform_task(charge_payment, args=(order.pk,), attempt=5)

    assert first.outcome is Outcome.RETRIED
    assert 5 <= first.retry_in <= 5 * 1.15  # exponential(factor=5): 5 s, plus jitter
    assert last.outcome is Outcome.EXHAUSTED
    assert Payment.objects.count() == 0
    [letter] = reliable_db.dead_letters.list()
    assert (letter.task_name, letter.outcome) == (charge_payment.name, "exhausted")


def test_a_rate_limit_waits_as_long_as_the_gateway_says(order, settings):
    settings.SHOP_GATEWAY_FAULTS = {order.email: ["rate_limited"]}

    done = perform_task(charge_payment, args=(order.pk,), attempt=1)

    assert done.outcome is Outcome.RETRIED
    assert done.retry_in >= 2  # RateLimited(retry_after=2)


def test_a_declined_card_is_discarded_without_a_retry(reliable_db):
    declined = Order.objects.create(email="declined@example.com", sku="tea", amount_cents=99)

    done = perform_task(charge_payment, args=(declined.pk,))

    assert done.outcome is Outcome.DISCARDED
    assert "CardDeclined" in done.reason
    assert [d.outcome for d in reliable_db.dead_letters.list()] == ["discarded"]


def test_a_deleted_order_cancels_its_charge():
    done = perform_task(charge_payment, args=(123456,))

    assert done.outcome is Outcome.CANCELLED


def test_draining_runs_the_retries_to_the_end(settings):
    settings.SHOP_GATEWAY_FAULTS = {"bob@example.com": ["timeout", "rate_limited"]}
    order = place_order(email="bob@example.com", sku="cup", amount_cents=800)

    counts = drain()  # retries and snoozes run at once, waits skipped

    # the charge (3 runs), the confirmation, and the inventory sync the charge published
    assert counts == {"retried": 2, "succeeded": 3}
    assert Payment.objects.filter(order=order).count() == 1
    assert Stock.objects.get(sku="cup").quantity == 12


# --- send_order_confirmation ------------------------------------------------------------


def test_a_confirmation_is_mailed_once(order, mailoutbox):
    first = perform_task(send_order_confirmation, args=(order.pk,))
    again = perform_task(send_order_confirmation, args=(order.pk,))

    assert (first.outcome, again.outcome) == (Outcome.SUCCEEDED, Outcome.DUPLICATE)
    assert [m.to for m in mailoutbox] == [["ada@example.com"]]


def test_an_invalid_address_is_discarded(mailoutbox):
    order = Order.objects.create(email="not an address", sku="tea", amount_cents=1)

    done = perform_task(send_order_confirmation, args=(order.pk,))

    assert done.outcome is Outcome.DISCARDED
    assert mailoutbox == []


def test_a_confirmation_of_a_deleted_order_is_cancelled(mailoutbox):
    done = perform_task(send_order_confirmation, args=(123456,))

    assert done.outcome is Outcome.CANCELLED
    assert "DoesNotExist" in done.reason
    assert mailoutbox == []


def test_an_smtp_timeout_is_retried(order, settings):
    settings.EMAIL_BACKEND = "tests.mail.TimeoutBackend"

    assert perform_task(send_order_confirmation, args=(order.pk,)).outcome is Outcome.RETRIED
    last = perform_task(send_order_confirmation, args=(order.pk,), attempt=5)
    assert last.outcome is Outcome.EXHAUSTED


# --- sync_inventory -------------------------------------------------------------------


def test_inventory_sync_is_enqueued_once_per_sku():
    first = sync_inventory.delay("tea")
    second = sync_inventory.delay("tea")  # within the 60 s period: not published

    assert second.id == first.id
    assert len(all_enqueued(sync_inventory)) == 1


def test_a_busy_warehouse_snoozes_the_sync(settings):
    settings.SHOP_WAREHOUSE_BUSY_UNTIL = time.time() + 30

    done = perform_task(sync_inventory, args=("pot",))

    assert done.outcome is Outcome.SNOOZED
    assert done.retry_in == pytest.approx(30, rel=0.2)
    assert not Stock.objects.exists()


def test_inventory_sync_sets_the_stock():
    assert perform_task(sync_inventory, args=("pot",)).result == 3
    assert Stock.objects.get(sku="pot").quantity == 3


def test_a_sync_is_retried_while_the_database_is_gone(database_gone):
    done = perform_task(sync_inventory, args=("pot",))

    assert done.outcome is Outcome.RETRIED
    assert isinstance(done.exc, OperationalError)
    assert 1 <= done.retry_in <= 1.15  # exponential(): 1 s, plus jitter


def test_an_unknown_sku_is_an_error_nobody_declared():
    done = perform_task(sync_inventory, args=("kettle",))

    assert done.outcome is Outcome.FAILED
    assert isinstance(done.exc, KeyError)


# --- forget_abandoned_orders (celery beat) --------------------------------------------


def test_abandoned_orders_are_forgotten_every_hour(order):
    old = Order.objects.create(email="old@example.com", sku="tea", amount_cents=1)
    Order.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=2))

    assert perform_task(forget_abandoned_orders).result == 1
    assert list(Order.objects.values_list("pk", flat=True)) == [order.pk]
    entry = app.conf.beat_schedule["forget-abandoned-orders"]
    assert (entry["task"], entry["schedule"]) == (forget_abandoned_orders.name, 3600.0)


def test_forgetting_orders_is_retried_then_exhausted_while_the_database_is_gone(
    database_gone, reliable_db
):
    first = perform_task(forget_abandoned_orders)
    last = perform_task(forget_abandoned_orders, attempt=3)

    assert first.outcome is Outcome.RETRIED
    assert isinstance(first.exc, OperationalError)
    assert last.outcome is Outcome.EXHAUSTED
    assert "attempts exhausted: 3/3" in last.reason
    [letter] = reliable_db.dead_letters.list()
    assert (letter.task_name, letter.outcome) == (forget_abandoned_orders.name, "exhausted")


# --- what operations sees ---------------------------------------------------------------


def test_each_outcome_is_a_statsd_counter(order, statsd_lines):
    perform_task(charge_payment, args=(order.pk,))

    assert "shop.orders_tasks_charge_payment.started:1|c" in statsd_lines
    assert "shop.orders_tasks_charge_payment.succeeded:1|c" in statsd_lines


def test_an_exhausted_charge_is_one_sentry_error(order, settings, sentry_events):
    settings.SHOP_GATEWAY_FAULTS = {order.email: ["timeout"] * 10}

    perform_task(charge_payment, args=(order.pk,))  # retried: quiet
    perform_task(charge_payment, args=(order.pk,), attempt=5)

    [event] = sentry_events
    assert event["level"] == "error"
    assert event["tags"]["outcome"] == "exhausted"
    assert sentry_events.exception_types() == ["GatewayTimeout"]


def test_every_task_meets_the_production_gates():
    findings = check(app)

    assert findings.passed, findings.misses()
