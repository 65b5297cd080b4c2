"""A real ``celery worker`` process (prefork by default) for tests where crashes, time
limits or process pools matter. Its log is collected so a failing test can show it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if " ready." in line:
                self._ready.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self, timeout: float = 30) -> None:
        if not self._ready.wait(timeout):
            self.stop()
            raise AssertionError(f"celery worker not ready after {timeout}s:\n{self.output}")

    def kill_group(self) -> None:
        """SIGKILL the main process and its pool at once, as a lost host would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

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
def celery_worker(
    app: str,
    env: dict[str, str],
    *,
    pool: str = "prefork",
    concurrency: int = 2,
    queues: str | None = None,
    extra: list[str] | None = None,
    new_session: bool = False,
    loglevel: str = "INFO",
) -> Iterator[WorkerProcess]:
    """Start ``celery -A app worker`` and wait until it is ready."""
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
    ]
    if queues:
        command += ["-Q", queues]
    command += extra or []
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A process group of its own: the test can SIGKILL the whole worker at once.
        start_new_session=new_session,
    )
    worker = WorkerProcess(proc)
    try:
        if loglevel == "INFO":  # "ready." is logged at INFO
            worker.wait_ready()
        yield worker
    finally:
        worker.stop()


def run_worker_to_exit(app: str, env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run ``celery -A app worker`` (solo pool) that is expected to stop on its own (a
    worker that refuses to start): its exit status and whole output."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return run.returncode, run.stdout + run.stderr
