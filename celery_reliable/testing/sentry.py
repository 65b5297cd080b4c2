"""The events the real Sentry SDK would send (``sentry_events``), kept by a transport.

Nothing of the SDK is replaced but its transport, the object that would post the
envelopes over HTTP: events go through the SDK's own scopes, event processors,
``before_send`` and sampling exactly as in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sentry_sdk
from sentry_sdk.transport import Transport

__all__ = ["SentryEvents", "capture_sentry_events"]

#: A DSN for a client made only for the test: nothing is ever sent to it.
_TEST_DSN = "http://public@127.0.0.1:9/0"


class SentryEvents(list[dict[str, Any]]):
    """The events, as the JSON payloads Sentry would receive, in order."""

    def with_tag(self, name: str, value: str) -> list[dict[str, Any]]:
        return [e for e in self if (e.get("tags") or {}).get(name) == value]

    def exception_types(self) -> list[str]:
        """The type of each event's exception (the last, outermost, of a chain)."""
        types = []
        for event in self:
            values = (event.get("exception") or {}).get("values") or []
            types.append(values[-1].get("type", "") if values else "")
        return types


class _KeepingTransport(Transport):
    def __init__(self, events: SentryEvents, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.events = events

    def capture_envelope(self, envelope: Any) -> None:
        event = envelope.get_event()
        if event is not None:
            self.events.append(event)

    def flush(self, timeout: float, callback: Any = None) -> None:
        return None

    def kill(self) -> None:
        return None


@contextmanager
def capture_sentry_events(**init_options: Any) -> Iterator[SentryEvents]:
    """Keep the events sent inside the block. A client the test (or its conftest)
    already initialised keeps its options, and only its transport is swapped; without
    one, a client is initialised for the block with ``init_options``."""
    events = SentryEvents()
    client: Any = sentry_sdk.get_client()
    if client.is_active():
        previous = client.transport
        client.transport = _KeepingTransport(events, client.options)
        try:
            yield events
        finally:
            client.transport = previous
        return
    options = {"dsn": _TEST_DSN, "auto_enabling_integrations": False, **init_options}
    sentry_sdk.init(transport=_KeepingTransport(events), **options)
    try:
        yield events
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
