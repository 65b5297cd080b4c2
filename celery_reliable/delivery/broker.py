"""What celery_reliable needs to know of an app's broker, read from its settings.

One reading for everyone: the ``delivery`` gate (``audit/gates.py``) and the worker's
runtime (keepalive and rescue, the atomic fetch) both ask here, so they cannot
disagree on whether a broker is Redis or on its visibility timeout.

Reads ``app.conf`` only: no connection is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: kombu transports whose unacknowledged messages live in Redis's ``unacked_index``.
REDIS_TRANSPORTS = frozenset({"redis", "rediss", "sentinel"})

#: Brokers that hand an unacknowledged message to another consumer after a timeout,
#: with kombu's default ``visibility_timeout`` for each (seconds).
VISIBILITY_TIMEOUT_BROKERS = {
    "redis": 3600.0,
    "rediss": 3600.0,
    "sentinel": 3600.0,
    "sqs": 1800.0,
    "pgmq": 1800.0,
}


def transport_of(url: str) -> str:
    """``redis+socket:///x`` -> ``redis``: the kombu transport a broker URL names (a
    URL without ``://`` is a transport alias, as kombu reads it)."""
    scheme = url.split("://", 1)[0] if "://" in url else url
    return scheme.split("+", 1)[0].lower()


def _urls(value: Any) -> Iterator[str]:
    """Every URL of one setting: a list, or ``;``-separated failover URLs."""
    for one in value if isinstance(value, (list, tuple)) else [value] if value else []:
        yield from str(one).split(";")


@dataclass(frozen=True)
class BrokerFacts:
    """The broker a worker consumes from, as far as delivery is concerned."""

    transport: str
    #: Seconds before an unacknowledged message goes to another consumer; None for
    #: brokers without one (RabbitMQ holds it until the connection closes).
    visibility_timeout: float | None

    @classmethod
    def of(cls, app: Any) -> BrokerFacts:
        # The consumer's side holds unacknowledged messages: the read URL, its first
        # failover URL (the one a worker connects to first).
        first = next(_urls(app.conf.broker_read_url or app.conf.broker_url), "amqp://")
        transport = transport_of(first)
        default = VISIBILITY_TIMEOUT_BROKERS.get(transport)
        if default is None:
            return cls(transport, None)
        options = app.conf.broker_transport_options or {}
        value = options.get("visibility_timeout", default)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = default
        return cls(transport, seconds)

    @property
    def is_redis(self) -> bool:
        return self.transport in REDIS_TRANSPORTS


def uses_redis(app: Any) -> bool:
    """Whether any of the app's broker URLs is a Redis one (read, write or failover):
    kombu's Redis transport is then loaded, and the atomic fetch must be in place."""
    conf = app.conf
    # The properties, not conf.get(): they read CELERY_BROKER_URL and broker_host too.
    return any(
        transport_of(url) in REDIS_TRANSPORTS
        for setting in (conf.broker_url, conf.broker_read_url, conf.broker_write_url)
        for url in _urls(setting)
    )
