"""A Sentry endpoint on loopback: the real SDK sends its envelopes over real HTTP to it,
and the tests read back the events it received."""

from __future__ import annotations

import contextlib
import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

#: The Redis list where each process of a worker running ``tests.support.apps.sentry``
#: leaves its pid once it has flushed its Sentry client on its way out: after that, it
#: can send no other event.
FLUSHED = "sentry:flushed"


def parse_envelope(body: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The items of a Sentry envelope: (item header, payload)."""
    items = []
    rest = body.split(b"\n", 1)[1] if b"\n" in body else b""
    while rest.strip():
        header_line, _, rest = rest.partition(b"\n")
        header = json.loads(header_line)
        length = header.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length + 1 :]
        items.append((header, payload))
    return items


class SentryServer:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                server._received(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.dsn = f"http://public@127.0.0.1:{self.port}/1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def _received(self, body: bytes) -> None:
        with self._lock:
            self.requests += 1
            for header, payload in parse_envelope(body):
                if header.get("type") == "event":
                    self.events.append(json.loads(payload))

    def all_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextlib.contextmanager
def running_sentry_server() -> Iterator[SentryServer]:
    server = SentryServer()
    try:
        yield server
    finally:
        server.close()


def sentry_off() -> None:
    """The process's Sentry client gone (a no-op one), as before any ``init``.

    Not ``sentry_sdk.init()``: that turns on the default integrations, CeleryIntegration
    among them, whose patches (kept for the process's life) then add their headers to
    every later publish of every test in the process.
    """
    import sentry_sdk

    sentry_sdk.get_global_scope().set_client(None)
