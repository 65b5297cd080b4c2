"""The worker's heartbeat monitor: a thread of the main process that watches the beat
board and ends an execution silent for longer than its ``heartbeat_timeout``.

Every quarter second it reads the board's modification times (no store, no broker):

* silent past the timeout: ``HeartbeatTimeout`` is raised in the body
  (``interrupt.py``), again every second while the silence lasts (a body that
  swallowed it and still does not beat gets it again);
* silent past the timeout and its grace (``options.heartbeat_grace``): the body did
  not return to Python. A prefork pool process is killed by the ``kill`` the worker
  gives (``worker/stuck.py``: the pool replaces the process, and the worker decides
  the outcome from ``HeartbeatTimeout`` by the task's rules before it settles the
  message: ``retry_on(HeartbeatTimeout)`` retries it). A thread cannot be killed, and
  an error says so once.

The silence is measured on the monotonic clock from when the monitor saw the file
change, so a wall clock that jumps does not end a body that beats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery_reliable.longrun import board, interrupt
from celery_reliable.options import heartbeat_grace

logger = logging.getLogger("celery_reliable.heartbeat")

#: Seconds between two reads of the board.
INTERVAL = 0.25
#: Seconds between two interrupts of one silent execution.
REPEAT = 1.0


@dataclass
class _Watched:
    entry: board.Entry
    inode: int
    mtime: float
    last_beat: float  # monotonic
    interrupted: float = 0.0  # monotonic, 0 for never
    given_up: bool = False


class HeartbeatMonitor:
    """Watches one worker's board; ``pool_processes`` names the pids it may kill."""

    def __init__(
        self,
        path: str,
        pool_processes: Callable[[], set[int]],
        kill: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.path = path
        self.pool_processes = pool_processes
        #: Ends the pool process ``pid`` running task ``task_id``, for this reason.
        self.kill = kill or _kill_process
        self._watched: dict[str, _Watched] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="celery_reliable-heartbeats", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            try:
                self.check()
            except Exception:  # never let the watcher die: log, look again
                logger.exception("celery_reliable heartbeat monitor: checking the board failed")

    def check(self) -> None:
        now = time.monotonic()
        seen: set[str] = set()
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return
        for name in names:
            watched = self._look(name, now)
            if watched is None:
                continue
            seen.add(name)
            silence = now - watched.last_beat
            timeout = watched.entry.timeout
            if silence <= timeout:
                continue
            if silence > timeout + heartbeat_grace(timeout):
                self._give_up(watched, silence)
            elif now - watched.interrupted >= REPEAT:
                watched.interrupted = now
                if interrupt.interrupt(watched.entry):
                    logger.warning(
                        "task %s[%s]: no heartbeat for %.1fs (heartbeat_timeout=%gs): "
                        "HeartbeatTimeout raised in it",
                        watched.entry.task_name,
                        watched.entry.task_id,
                        silence,
                        timeout,
                    )
        for gone in set(self._watched) - seen:
            del self._watched[gone]

    def _look(self, name: str, now: float) -> _Watched | None:
        path = os.path.join(self.path, name)
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        watched = self._watched.get(name)
        same_file = watched is not None and watched.inode == stat.st_ino
        if same_file and watched is not None and watched.mtime == stat.st_mtime:
            return watched
        # A new file (a new execution, maybe a retry of the same task id) or a beat.
        entry = watched.entry if same_file and watched is not None else board.read_entry(path)
        if entry is None:
            return None
        # It happened this long ago, by the wall clock.
        ago = min(max(time.time() - stat.st_mtime, 0.0), entry.timeout)
        fresh = _Watched(entry, stat.st_ino, stat.st_mtime, now - ago)
        self._watched[name] = fresh
        return fresh

    def _give_up(self, watched: _Watched, silence: float) -> None:
        if watched.given_up:
            return
        watched.given_up = True
        entry = watched.entry
        grace = heartbeat_grace(entry.timeout)
        if entry.pid != os.getpid() and entry.pid in self.pool_processes():
            reason = (
                f"no heartbeat for {silence:.0f}s (heartbeat_timeout={entry.timeout:g}s), and "
                f"the HeartbeatTimeout raised in it did not end it within {grace:g}s (blocked "
                "in code that does not return to Python): its pool process was killed"
            )
            logger.error("task %s[%s]: %s", entry.task_name, entry.task_id, reason)
            self.kill(entry.task_id, entry.pid, reason)
            board.unpin(entry.path)
            return
        logger.error(
            "task %s[%s]: no heartbeat for %.0fs (heartbeat_timeout=%gs) and still running "
            "%gs after HeartbeatTimeout was raised in it: a thread cannot be killed, so it "
            "holds its pool slot until its body returns (use the prefork pool to have it "
            "killed)",
            entry.task_name,
            entry.task_id,
            silence,
            entry.timeout,
            grace,
        )


def _kill_process(task_id: str, pid: int, reason: str) -> None:
    """Without a worker to go through (the monitor's own tests): SIGKILL."""
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, signal.SIGKILL)


#: The worker's attribute holding its monitor, for ``stop_monitor``.
_WORKER_ATTR = "_reliable_heartbeats"


def start_monitor(
    worker: object, path: str, kill: Callable[[str, int, str], None]
) -> HeartbeatMonitor:
    """A worker's monitor of the board at ``path``; it may kill its prefork pool's
    processes only, by ``kill``."""

    def pool_processes() -> set[int]:
        pool = getattr(worker, "pool", None)
        info = getattr(pool, "info", None) or {}
        return {int(pid) for pid in info.get("processes") or ()}

    monitor = HeartbeatMonitor(path, pool_processes, kill)
    setattr(worker, _WORKER_ATTR, monitor)
    monitor.start()
    return monitor


def stop_monitor(worker: object) -> None:
    """The worker's pool has finished (``worker_shutdown``) or the worker is terminated:
    stop watching and remove the board."""
    monitor = getattr(worker, _WORKER_ATTR, None)
    if monitor is not None:
        setattr(worker, _WORKER_ATTR, None)
        monitor.stop()
        board.close_board(monitor.path)
