"""When the worker bootstep installs the atomic fetch (the fetch itself, on a real
Redis: tests/integration/test_atomic_fetch.py)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from celery_reliable.atomic_fetch import SentinelTransport, Transport, install, redis_version
from celery_reliable.config import settings_for


def _app(broker: Any, **conf: Any) -> Celery:
    app = Celery("atomic-fetch-unit", broker=broker, set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.mark.parametrize(
    ("broker", "name"),
    [
        ("redis://localhost:6379/0", "reliable-redis"),
        ("rediss://localhost:6380/0?ssl_cert_reqs=required", "reliable-redis"),
        ("redis://a:6379/0;redis://b:6379/0", "reliable-redis"),
        ("sentinel://s1:26379;sentinel://s2:26379", "reliable-sentinel"),
    ],
)
def test_redis_brokers_get_the_atomic_fetch(broker: str, name: str) -> None:
    app = _app(broker)
    assert install(app, settings_for(app)) == name
    assert app.conf.broker_transport == name


def test_the_transports_resolve_through_kombu() -> None:
    app = _app("redis://localhost:6379/0")
    install(app, settings_for(app))
    assert app.connection_for_read().transport_cls == "reliable-redis"
    assert type(app.connection_for_read().transport) is Transport
    assert type(Connection("sentinel://s:26379", transport="reliable-sentinel").transport) is (
        SentinelTransport
    )


@pytest.mark.parametrize(
    ("broker", "conf"),
    [
        ("amqp://guest@localhost//", {}),
        ("sqla+sqlite:///broker.db", {}),
        ("redis+socket:///run/redis.sock", {}),  # kombu takes "redis" from the URL itself
        ("redis://localhost:6379/0", {"broker_write_url": "amqp://localhost//"}),
        ("redis://localhost:6379/0", {"reliable_atomic_fetch": False}),
    ],
    ids=["amqp", "sqla", "redis+socket", "mixed", "off"],
)
def test_other_brokers_and_the_setting_off_keep_kombus_transport(
    broker: str, conf: dict[str, Any]
) -> None:
    app = _app(broker, **conf)
    assert install(app, settings_for(app)) is None
    assert app.conf.broker_transport is None


def test_a_transport_the_user_chose_is_kept_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app("redis://localhost:6379/0", broker_transport="myproject.transport:Redis")
    assert install(app, settings_for(app)) is None
    assert app.conf.broker_transport == "myproject.transport:Redis"
    assert "reliable_atomic_fetch = False" in caplog.text


def test_broker_transport_naming_the_scheme_is_replaced() -> None:
    app = _app("redis://localhost:6379/0", broker_transport="redis")
    assert install(app, settings_for(app)) == "reliable-redis"


@pytest.mark.parametrize(
    ("text", "version"), [("7.0.15", (7, 0, 15)), ("6.2.0", (6, 2, 0)), ("5.0.7-rc1", (5, 0, 7))]
)
def test_redis_versions_are_read(text: str, version: tuple[int, ...]) -> None:
    assert redis_version(text) == version
