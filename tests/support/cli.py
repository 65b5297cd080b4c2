"""``celery -A APP reliable ...`` as a user runs it, its output read whole (piped, so
listings are tab-separated lines).

Two ways, one result (a :class:`subprocess.CompletedProcess`):

* in this process (the default): Celery's own ``celery`` click group
  (``celery.bin.celery.celery``, where the ``celery.commands`` entry point put our
  ``reliable`` group) is run by click's ``CliRunner`` with ``-A APP``: Celery loads the
  app module afresh under the command's environment, as a new process would, and our
  command runs as it does for a user; what a process of its own would print to stderr
  (errors, warnings logged with no logging set up, a traceback) lands in ``stderr``.
  About 1-2 s less per command than a new Python with Celery imported.
* a real process (``process=True``): ``python -m celery``; each command family keeps
  one such run, which proves the entry point's wiring from a shell.
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import traceback
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from tests.support.workers import ROOT

#: Click's name for ``python -m celery`` (what usage lines say in a real process).
PROG_NAME = "python -m celery"


def run_reliable(
    app: str, env: dict[str, str], *args: str, answer: str | None = None, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A app reliable *args`` with the test's servers in ``env``;
    ``answer`` is typed at a confirmation prompt. ``process``: in a new process."""
    if process:
        return subprocess.run(
            [sys.executable, "-m", "celery", "-A", app, "reliable", *args],
            check=False,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            capture_output=True,
            text=True,
            input=answer,
            timeout=60,
        )
    return _in_process(app, env, list(args), answer)


def cli_app(
    broker: str, store: str, *args: str, answer: str | None = None, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """``reliable *args`` on the CLI tests' helper app (``apps/cli.py``)."""
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store, "COLUMNS": "200"}
    return run_reliable("tests.support.apps.cli", env, *args, answer=answer, process=process)


def _in_process(
    app: str, env: dict[str, str], args: list[str], answer: str | None
) -> subprocess.CompletedProcess[str]:
    from celery.bin.celery import celery
    from click.testing import CliRunner

    from celery_reliable.cli import reliable

    # The command a user's `celery` finds by the entry point is ours.
    assert celery.commands.get("reliable") is reliable, celery.commands.get("reliable")
    argv = ["-A", app, "reliable", *args]
    with (
        _fresh_module(app.partition(":")[0]) as loaded,
        _current_app_kept(),
        _test_receivers_dropped(),
        _stderr_as_last_resort(),
    ):
        result = CliRunner().invoke(
            celery,
            argv,
            input=answer,
            env=env,
            prog_name=PROG_NAME,
            auto_envvar_prefix="CELERY",
        )
    _close_apps(loaded)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        assert result.exc_info is not None
        # What Python prints for an exception no one caught.
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess([PROG_NAME, *argv], result.exit_code, result.stdout, stderr)


@contextmanager
def _fresh_module(name: str) -> Iterator[list[ModuleType]]:
    """The app module imported anew while the command runs (its settings read from the
    command's environment, as in a new process), the test's own copy back afterwards.
    Yields the fresh module (once imported) for its apps to be closed."""
    parent_name, _, leaf = name.rpartition(".")
    before = sys.modules.pop(name, None)
    parent = sys.modules.get(parent_name) if parent_name else None
    if parent is not None and hasattr(parent, leaf):
        # Celery finds ``package.module`` as the package's attribute first.
        delattr(parent, leaf)
    loaded: list[ModuleType] = []
    try:
        yield loaded
    finally:
        fresh = sys.modules.pop(name, None)
        if fresh is not None and fresh is not before:
            loaded.append(fresh)
        if before is not None:
            sys.modules[name] = before
        parent = sys.modules.get(parent_name) if parent_name else None
        if parent is not None:
            if before is not None:
                setattr(parent, leaf, before)
            elif hasattr(parent, leaf):
                delattr(parent, leaf)
        importlib.invalidate_caches()


@contextmanager
def _current_app_kept() -> Iterator[None]:
    """The fresh module's app makes itself Celery's current app: the test's is put back."""
    from celery import _state

    current = getattr(_state._tls, "current_app", None)
    default = _state.default_app
    try:
        yield
    finally:
        _state._set_current_app(current)
        _state.set_default_app(default)


def _signals() -> list[Any]:
    from celery import signals as celery_signals
    from celery.utils.dispatch import Signal

    from celery_reliable import signals

    return [
        value
        for module in (celery_signals, signals)
        for value in vars(module).values()
        if isinstance(value, Signal)
    ]


@contextmanager
def _test_receivers_dropped() -> Iterator[None]:
    """Receivers the fresh helper module connected (``record_outcomes_to``: a worker's
    outcomes written to Redis) disconnected after the command, as its process would
    end: a module of the test support run again would add one per command. What the
    package connects when a module of it is first imported stays connected."""
    before = {id(signal): {id(entry) for entry in signal.receivers} for signal in _signals()}
    try:
        yield
    finally:
        for signal in _signals():
            kept = before.get(id(signal), set())
            added = [entry for entry in signal.receivers if id(entry) not in kept]
            for entry in added:
                target = entry[1]() if isinstance(entry[1], weakref.ReferenceType) else entry[1]
                if str(getattr(target, "__module__", "")).startswith("tests."):
                    signal.receivers.remove(entry)
                    signal.sender_receivers_cache.clear()


class _StderrNow(logging.Handler):
    """Python's last-resort handler (WARNING and up, the bare message, to whatever
    ``sys.stderr`` is now): what a ``celery ... reliable`` process prints for a log
    record, since the command sets up no logging."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextmanager
def _stderr_as_last_resort() -> Iterator[None]:
    handler = _StderrNow()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _close_apps(modules: list[ModuleType]) -> None:
    """The fresh apps' store connections closed (a process that ends closes them)."""
    from celery import Celery

    from celery_reliable.testing import reset

    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, Celery):
                reset(value)
                # (Its broker connections are in kombu's pool for the URL, shared by
                # every app of this process on that broker: left open there.)
                value.close()
