"""Workers for the tests: an embedded worker (a real Celery worker on the threads pool,
in this process) and real ``celery worker`` processes (prefork by default) for tests
where crashes, time limits or process pools matter, their log collected so a failing
test can show it.

:func:`settle` proves that an embedded worker has nothing more to do for what a test
did, by a sentinel job published last on the same queue: what a test asserts did *not*
happen after it has then had every chance to happen.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import kombu.asynchronous
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_received
from celery.worker import state as worker_state

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

#: The task every embedded worker's app gets, for :func:`settle`.
SENTINEL = "tests.support.sentinel"

_worker_running = threading.Lock()
#: Every request the running embedded worker received, in the order it received them.
_received: list[Any] = []


def _receive(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is not None:
        _received.append(request)


def _add_sentinel(app: Celery) -> None:
    if SENTINEL not in app.tasks:

        @app.task(name=SENTINEL, shared=False)
        def sentinel() -> str:
            return "sentinel"


@contextlib.contextmanager
def embedded_worker(app: Celery, concurrency: int = 4, **kwargs: Any) -> Iterator[Any]:
    """A real Celery worker consuming from the real broker, in a thread.

    One at a time: embedded workers share kombu's global event loop, so a second one
    in the same process would steal the first one's events.
    """
    if not _worker_running.acquire(blocking=False):
        raise RuntimeError(
            "an embedded worker is already running in this process: tests that start "
            "their own worker belong in a module without a module-scoped worker"
        )
    _received.clear()
    _add_sentinel(app)
    task_received.connect(_receive, weak=False)
    try:
        # A worker adopts kombu's global event loop if one exists; on Celery 5.4 and 5.5 that
        # loop keeps the previous worker's timer, so this worker's ETA and countdown
        # messages (every retry) would never run. Each worker gets a loop of its own.
        kombu.asynchronous.set_event_loop(None)
        with start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            loglevel="WARNING",
            shutdown_timeout=30,
            **kwargs,
        ) as worker:
            yield worker
    finally:
        task_received.disconnect(_receive)
        _received.clear()
        # The worker pointed kombu's "redis" at the atomic fetch for this process: give
        # the name back, so that what runs next sees kombu as its settings say.
        from celery_reliable.delivery import atomic_fetch

        atomic_fetch.uninstall()
        _worker_running.release()


def _due(request: Any, now: datetime) -> bool:
    eta = request.eta
    if not eta:
        return True
    when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return bool(when <= now)


def _unfinished() -> list[str]:
    """The requests the embedded worker received, that are due, and that have not
    ended: still reserved or running, or their message not yet acknowledged (a
    ``task_acks_late`` message is acknowledged, rejected or requeued only after its
    request has left the reserved ones)."""
    now = datetime.now(timezone.utc)
    reserved = set(worker_state.reserved_requests)
    return [
        f"{r.name}[{r.id}]"
        for r in list(_received)
        if _due(r, now) and (r in reserved or not r.acknowledged)
    ]


def settle(app: Celery, *, longest_wait: float = 0.5, timeout: float = 30) -> None:
    """Prove that the embedded worker running ``app`` has nothing more to do for what
    the test did, before the test asserts that something did not happen (no second
    run, no later link of a chain, no more log lines, no outcome):

    1. wait until every request the worker received has ended and its message is
       settled (acknowledged, rejected or requeued), but for those whose countdown
       has not run out: whatever these executions published (a retry, a snooze, a
       requeue, a chain's next link) is on the queue by then;
    2. publish a sentinel job last on the same queue, with a countdown of
       ``longest_wait`` seconds, the longest countdown anything published in step 1
       can carry (a rule's wait): the worker's timer releases them before it;
    3. wait for the sentinel to run, then for every request received before it to
       have ended, as in step 1.
    """
    what = "every request of the embedded worker to end"
    wait_until(lambda: not _unfinished(), what, timeout=timeout, seen=_unfinished)
    sentinel = app.send_task(SENTINEL, countdown=longest_wait)
    wait_until(
        sentinel.ready,
        f"the sentinel job {sentinel.id}, published last, to run",
        timeout=timeout,
        seen=lambda: sentinel.state,
    )
    wait_until(lambda: not _unfinished(), what, timeout=timeout, seen=_unfinished)


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
