"""The StatsD lines an app sends, received on a real UDP socket (``statsd_lines``)."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator

__all__ = ["StatsdLines"]


class StatsdLines:
    """A UDP socket on loopback that keeps every line sent to it, in order.

    Reading (``lines``, iterating, ``in``, ``len``) first takes what has arrived: on
    loopback a datagram is there as soon as ``sendto`` returned, so after
    ``perform_task`` or ``drain`` the lines are all in. A worker in another thread or
    process sends later: ``wait_for`` waits for them.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.setblocking(False)
        self.host: str = host
        self.port: int = self._sock.getsockname()[1]
        self._lines: list[str] = []

    def _receive(self) -> None:
        while True:
            try:
                data = self._sock.recv(65535)
            except BlockingIOError:
                return
            self._lines.extend(data.decode("utf-8", "replace").splitlines())

    @property
    def lines(self) -> list[str]:
        """Every line received so far (a copy)."""
        self._receive()
        return list(self._lines)

    def names(self) -> list[str]:
        """The metric names received, in order (``celery.shop_charge.retried``)."""
        return [line.split(":", 1)[0] for line in self.lines]

    def matching(self, pattern: str) -> list[str]:
        """Lines that match the regular expression ``pattern`` as a whole."""
        return [line for line in self.lines if re.fullmatch(pattern, line)]

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> list[str]:
        """Wait until ``count`` lines match ``pattern``; returns the matches, or raises
        ``AssertionError`` naming what arrived instead."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(pattern)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} of {count} StatsD lines matching {pattern!r} arrived in "
                    f"{timeout:g} s; received: {self._lines}"
                )
            time.sleep(0.01)

    def clear(self) -> None:
        self._receive()
        self._lines.clear()

    def close(self) -> None:
        self._sock.close()

    def __iter__(self) -> Iterator[str]:
        return iter(self.lines)

    def __len__(self) -> int:
        return len(self.lines)

    def __contains__(self, line: object) -> bool:
        return line in self.lines

    def __repr__(self) -> str:
        return f"StatsdLines({self.host}:{self.port}, {self.lines!r})"
