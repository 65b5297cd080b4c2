"""Ending a silent body: ``HeartbeatTimeout`` raised inside it.

* **prefork** (Celery's default): the worker's main process sends ``SIGUSR2`` to the
  pool process; its handler (installed at ``worker_process_init``) raises in the body.
  A ``sleep``, a socket read or a lock wait is interrupted at once; code that never
  returns to Python (a C extension holding the GIL) is not, and the monitor kills the
  process after the grace.
* **solo**: the same signal, to the worker's own process (its main thread runs the
  body).
* **threads**: the exception is set on the body's thread and raised at its next
  Python instruction: a body blocked in ``sleep`` or I/O is ended only when that call
  returns, and a thread cannot be killed.

The handler raises only when this process's main thread runs a body that is silent
past its timeout: a late signal, after the body beat or ended, changes nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from typing import Any

from celery_reliable.errors import HeartbeatTimeout
from celery_reliable.longrun import heartbeat
from celery_reliable.longrun.board import Entry

SIGNAL = signal.SIGUSR2

logger = logging.getLogger("celery_reliable.heartbeat")

#: Set, Celery's remote debugger (celery.contrib.rdb) takes SIGUSR2 in every process.
_RDB_SIGNAL = "CELERY_RDBSIG"


def _on_signal(signum: int, frame: Any) -> None:
    main = threading.main_thread().ident
    beat = heartbeat.of_thread(main) if main is not None else None
    if beat is not None and beat.overdue():
        raise HeartbeatTimeout(_message(beat))


def _message(beat: heartbeat.Heartbeat) -> str:
    return f"no heartbeat for {beat.silence():.1f}s (heartbeat_timeout={beat.timeout:g}s)"


def install_handler() -> bool:
    """In a pool process (and a solo worker's): ``SIGUSR2`` raises in a silent body.
    Only the main thread can set a handler: False elsewhere (an embedded worker), and
    False where the process has a handler of its own for it (Celery's remote debugger,
    with ``CELERY_RDBSIG``), which is kept: a silent body there is not interrupted."""
    if threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(SIGNAL)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None, _on_signal):
        logger.warning(
            "SIGUSR2 has a handler of its own in this process (%r): a body silent past "
            "its heartbeat_timeout is not interrupted here",
            current,
        )
        return False
    signal.signal(SIGNAL, _on_signal)
    return True


def handler_installed() -> bool:
    return signal.getsignal(SIGNAL) is _on_signal


def interrupt(entry: Entry) -> bool:
    """Raise ``HeartbeatTimeout`` in the execution ``entry`` names; False if it cannot
    be reached (its process is gone, or it is not silent any more)."""
    if _RDB_SIGNAL in os.environ:
        return False  # SIGUSR2 opens Celery's remote debugger there: never send it
    if entry.pid != os.getpid():
        try:
            os.kill(entry.pid, SIGNAL)
        except ProcessLookupError:
            return False
        return True
    beat = heartbeat.of_thread(entry.thread)
    if beat is None or not beat.overdue():
        return False
    if entry.thread == threading.main_thread().ident and handler_installed():
        os.kill(os.getpid(), SIGNAL)  # solo: the handler raises in the main thread
        return True
    return _raise_in_thread(entry.thread, HeartbeatTimeout)


def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """CPython's asynchronous exception: raised in that thread at its next bytecode."""
    set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    done = set_async(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if done > 1:  # more than one thread state: undo, as the C API asks
        set_async(ctypes.c_ulong(ident), None)
        return False
    return bool(done == 1)
