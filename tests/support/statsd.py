"""A StatsD server for tests: a real UDP socket on loopback that keeps every line."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator

from tests.support.waiting import wait_until

#: A number on the wire (counter, timer or gauge value).
NUMBER = r"[0-9]+(\.[0-9]+)?"


class StatsdServer:
    """A UDP socket on loopback that keeps every line it receives."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self.packets: list[list[str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            with self._lock:
                lines = data.decode().splitlines()
                self.packets.append(lines)
                self.lines.extend(lines)

    def matching(self, pattern: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if re.fullmatch(pattern, line)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10) -> list[str]:
        """The lines matching ``pattern``, once there are ``count`` of them."""
        return wait_until(
            lambda: (found := self.matching(pattern)) and len(found) >= count and found,
            f"{count} StatsD line(s) matching {pattern!r}",
            timeout=timeout,
            seen=lambda: self.matching(pattern) or self.lines[-20:],
        )

    def packets_with(self, text: str) -> list[list[str]]:
        with self._lock:
            return [packet for packet in self.packets if any(text in line for line in packet)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def running_statsd_server() -> Iterator[StatsdServer]:
    server = StatsdServer()
    try:
        yield server
    finally:
        server.close()
