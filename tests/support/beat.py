"""Real ``celery beat`` processes for the periodic jobs' tests: started, their log
collected (stdout and stderr, line by line), stopped with SIGTERM or killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

from tests.support.waiting import wait_until
from tests.support.workers import ROOT


class BeatProcess:
    def __init__(self, app: str, env: dict[str, str], name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", app, "beat", "--loglevel=INFO"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def said(self, text: str) -> list[str]:
        return [line for line in list(self.lines) if text in line]

    def wait_started(self, timeout: float = 30) -> None:
        wait_until(
            lambda: self.said("celery_reliable beat: ") or self.proc.poll() is not None,
            f"beat {self.name} to start",
            timeout=timeout,
            seen=lambda: self.output,
        )
        assert self.proc.poll() is None, self.output

    def kill(self) -> None:
        """SIGKILL, as a lost host: nothing of it runs after this."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)


@contextlib.contextmanager
def celery_beats(app: str, env: dict[str, str], count: int) -> Iterator[list[BeatProcess]]:
    """``count`` beat processes of ``app``, started at once, stopped at the end."""
    beats = [BeatProcess(app, env, f"beat-{n}") for n in range(count)]
    try:
        for beat in beats:
            beat.wait_started()
        yield beats
    finally:
        for beat in beats:
            beat.stop()
