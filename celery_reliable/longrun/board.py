"""The beat board: how a worker's main process sees that an execution is alive.

One directory per worker, made by its main process before the pool starts (prefork
children inherit the path); one small file per running execution of a task with
``heartbeat_timeout``, holding who runs it (process, thread) and its timeout. A beat
sets the file's modification time: one ``utime`` system call, no store, no lock,
whatever the pool (prefork, threads, solo). The monitor (``monitor.py``) reads the
times; the execution removes its file when it ends.

Outside a worker (``perform_task``, eager calls, a script) there is no board: beats
still renew the lease, nothing watches for silence.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass

#: This process's board directory: set by the worker's main process (``open_board``)
#: and inherited by its forked pool children.
_current: list[str] = []


_PREFIX = "celery_reliable-beats-"


def open_board() -> str:
    """A worker starts: a fresh board (in memory, under /dev/shm, when there is one),
    named after its process; the boards of workers that died without removing theirs
    (SIGKILL) are removed."""
    shm = "/dev/shm"
    where = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else tempfile.gettempdir()
    _remove_dead_boards(where)
    path = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=where)
    _current[:] = [path]
    return path


def _remove_dead_boards(where: str) -> None:
    with contextlib.suppress(OSError):
        for name in os.listdir(where):
            if not name.startswith(_PREFIX):
                continue
            owner = name[len(_PREFIX) :].split("-", 1)[0]
            if owner.isdigit() and not _alive(int(owner)):
                shutil.rmtree(os.path.join(where, name), ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def close_board(path: str) -> None:
    """The worker stopped: remove its board (if it is still this process's, forget it)."""
    shutil.rmtree(path, ignore_errors=True)
    if _current == [path]:
        _current.clear()


def board_path() -> str | None:
    return _current[0] if _current else None


@dataclass(frozen=True)
class Entry:
    """What the board says of one running execution."""

    task_id: str
    task_name: str
    pid: int
    thread: int
    timeout: float
    #: The monitor's file, for ``last_beat``.
    path: str


def entry_file(board: str, task_id: str) -> str:
    # A task id may be any string a publisher chose: the file is named by its digest.
    return os.path.join(board, hashlib.sha1(task_id.encode()).hexdigest())


def pin(board: str, task_id: str, task_name: str, timeout: float) -> str:
    """An execution starts: its file on the board, dated now. Returns its path.

    Three system calls, written in place: a monitor that reads the file half-written
    finds too few fields and reads it again on its next look (``read_entry``).
    """
    path = entry_file(board, task_id)
    # The task id last: it may hold any character, newlines included.
    record = f"{os.getpid()}\n{threading.get_ident()}\n{timeout!r}\n{task_name}\n{task_id}"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, record.encode())
    finally:
        os.close(descriptor)
    return path


def unpin(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def read_entry(path: str) -> Entry | None:
    """The execution a file names; None if it ended meanwhile (or is being written)."""
    try:
        with open(path, "rb") as file:
            fields = file.read().decode().split("\n", 4)
        pid, thread, timeout, task_name, task_id = fields
        return Entry(task_id, task_name, int(pid), int(thread), float(timeout), path)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return None
