"""The parts of the Redis keepalive and rescue that need no Redis (the rest:
tests/integration/test_redelivery.py, with real workers)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery

from celery_reliable.config import settings_for
from celery_reliable.delivery.redelivery import keepalive_interval, redelivery_for


@pytest.mark.parametrize(
    ("visibility_timeout", "interval"), [(1, 0.5), (4, 1.0), (60, 15.0), (3600, 60.0)]
)
def test_the_keepalive_renews_four_times_per_timeout_within_bounds(
    visibility_timeout: float, interval: float
) -> None:
    assert keepalive_interval(visibility_timeout) == interval


def _worker(broker: str, **conf: Any) -> Any:
    app = Celery("redelivery-unit", broker=broker, set_as_current=False)
    app.conf.update(conf)
    return SimpleNamespace(app=app)


def test_only_redis_brokers_get_the_thread() -> None:
    for broker, expected in [
        ("redis://127.0.0.1:1/0", True),
        ("rediss://127.0.0.1:1/0", True),
        ("sentinel://127.0.0.1:1", True),
        ("amqp://127.0.0.1:1//", False),
        ("sqs://", False),
        ("memory://", False),
    ]:
        worker = _worker(broker)
        found = redelivery_for(worker, settings_for(worker.app))
        assert (found is not None) is expected, broker


def test_the_thread_follows_the_settings() -> None:
    worker = _worker(
        "redis://127.0.0.1:1/0",
        broker_transport_options={"visibility_timeout": 20},
        reliable_rescue_interval=0.5,
    )
    found = redelivery_for(worker, settings_for(worker.app))
    assert found is not None
    assert (found.visibility_timeout, found.keepalive_every, found.rescue_every) == (20, 5, 0.5)
    off = _worker("redis://127.0.0.1:1/0", reliable_keepalive=False, reliable_orphan_rescue=False)
    assert redelivery_for(off, settings_for(off.app)) is None
