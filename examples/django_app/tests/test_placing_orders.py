"""What placing an order publishes: its jobs, once the order is committed."""

import pytest
from celery.exceptions import ImproperlyConfigured
from django.db import transaction
from orders.services import place_order
from orders.tasks import charge_payment, send_order_confirmation, sync_inventory

from celery_reliable.testing import all_enqueued, assert_enqueued, refute_enqueued

pytestmark = pytest.mark.django_db


def test_an_order_publishes_its_jobs_when_it_commits():
    order = place_order(email="ada@example.com", sku="tea", amount_cents=1200)

    # The test's transaction never commits; the plugin runs the on_commit callbacks a
    # commit would have run, so the jobs are published as in production.
    assert_enqueued(charge_payment, args=(order.pk,))
    assert_enqueued(send_order_confirmation, args=(order.pk,))
    assert len(all_enqueued()) == 2


def test_an_order_rolled_back_publishes_nothing():
    with pytest.raises(RuntimeError), transaction.atomic():
        place_order(email="ada@example.com", sku="tea", amount_cents=1200)
        raise RuntimeError("the request failed after the order was saved")

    refute_enqueued(charge_payment)
    assert all_enqueued() == []


def test_nothing_is_published_before_the_order_commits():
    with transaction.atomic():
        place_order(email="ada@example.com", sku="tea", amount_cents=1200)
        refute_enqueued(charge_payment)  # still inside the request's transaction
    assert_enqueued(charge_payment)


def test_the_api_places_an_order(client):
    response = client.post(
        "/orders", {"email": "ada@example.com", "sku": "cup", "amount_cents": "800"}
    )

    assert response.status_code == 201
    assert_enqueued(charge_payment, args=(response.json()["order"],))


def test_a_test_that_never_commits_cannot_use_the_store():
    # sync_inventory takes a unique lock in the store (Django's database) before it
    # publishes: its connection would wait for this test's transaction forever.
    with pytest.raises(ImproperlyConfigured, match=r"django_db\(transaction=True\)"):
        sync_inventory.delay("tea")
