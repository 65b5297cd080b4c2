"""When the worker bootstep installs the atomic fetch (the fetch itself, on a real
Redis: tests/integration/test_atomic_fetch.py). Nothing here connects: kombu builds
transports and parses URLs without a server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

from celery_reliable.config import settings_for
from celery_reliable.delivery import atomic_fetch
from celery_reliable.delivery.atomic_fetch import (
    SentinelTransport,
    Transport,
    install,
    redis_version,
)


@pytest.fixture(autouse=True)
def kombus_own_names() -> Iterator[None]:
    atomic_fetch.uninstall()
    yield
    atomic_fetch.uninstall()


def _app(broker: Any, **conf: Any) -> Celery:
    app = Celery("atomic-fetch-unit", broker=broker, set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.mark.parametrize(
    ("broker", "transport"),
    [
        ("redis://localhost:6379/0", Transport),
        ("rediss://localhost:6380/0", Transport),
        ("redis://a:6379/0;redis://b:6379/0", Transport),
        ("redis+socket:///run/redis.sock", Transport),
        ("sentinel://s1:26379;sentinel://s2:26379", SentinelTransport),
    ],
)
def test_redis_brokers_get_the_atomic_fetch(broker: str, transport: type) -> None:
    app = _app(broker)
    assert install(app, settings_for(app)) is True
    assert atomic_fetch.installed()
    assert type(app.connection_for_read().transport) is transport
    assert app.conf.broker_transport is None  # the user's settings are left alone


def test_tls_and_failover_work_as_with_kombus_names() -> None:
    """The names stay kombu's: a bare rediss:// keeps kombu's TLS default, and a
    switch to the next broker URL keeps the atomic fetch."""
    kombus = Connection("rediss://cache:6380/0")
    assert kombus.ssl
    app = _app("rediss://cache:6380/0;rediss://spare:6380/0")
    install(app, settings_for(app))
    connection = app.connection_for_read()
    assert connection.ssl == kombus.ssl
    assert connection.as_uri().startswith("rediss://")
    connection.switch("rediss://spare:6380/0")
    assert type(connection.transport) is Transport


def test_the_url_from_the_environment_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://from-env:6379/0")
    app = Celery("atomic-fetch-env", set_as_current=False)
    assert install(app, settings_for(app)) is True


def test_a_redis_read_url_beside_an_amqp_write_url_changes_only_redis() -> None:
    app = _app("redis://localhost:6379/0", broker_write_url="amqp://guest@localhost//")
    assert install(app, settings_for(app)) is True
    assert type(app.connection_for_read().transport) is Transport
    assert "amqp" in type(app.connection_for_write().transport).__module__


@pytest.mark.parametrize(
    ("broker", "conf"),
    [
        ("amqp://guest@localhost//", {}),
        ("sqla+sqlite:///broker.db", {}),
        ("redis://localhost:6379/0", {"reliable_atomic_fetch": False}),
    ],
    ids=["amqp", "sqla", "off"],
)
def test_other_brokers_and_the_setting_off_keep_kombus_transport(
    broker: str, conf: dict[str, Any]
) -> None:
    app = _app(broker, **conf)
    assert install(app, settings_for(app)) is False
    assert not atomic_fetch.installed()
    assert type(Connection("redis://localhost:6379/0").transport) is not Transport


def test_a_transport_the_user_chose_is_kept_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = _app("redis://localhost:6379/0", broker_transport="myproject.transport:Redis")
    assert install(app, settings_for(app)) is False
    assert not atomic_fetch.installed()
    assert "reliable_atomic_fetch = False" in caplog.text


@pytest.mark.parametrize("named", ["redis", "reliable-redis"])
def test_broker_transport_naming_redis_is_fine(named: str) -> None:
    app = _app("redis://localhost:6379/0", broker_transport=named)
    assert install(app, settings_for(app)) is True


def test_uninstall_gives_kombu_its_names_back() -> None:
    app = _app("redis://localhost:6379/0")
    install(app, settings_for(app))
    atomic_fetch.uninstall()
    assert type(Connection("redis://localhost:6379/0").transport) is not Transport
    assert type(Connection("redis://x/0", transport="reliable-redis").transport) is Transport


@pytest.mark.parametrize(
    ("text", "version"), [("7.0.15", (7, 0, 15)), ("6.2.0", (6, 2, 0)), ("5.0.7-rc1", (5, 0, 7))]
)
def test_redis_versions_are_read(text: str, version: tuple[int, ...]) -> None:
    assert redis_version(text) == version
