"""The observer registry: which observers (log line, StatsD, Sentry, dead letters,
history) an app's executions have, built from its settings.

The only module that imports ``celery_reliable.observers``. ``install`` runs once per
app when its first ReliableTask is bound and adds the worker's bootsteps by dotted
name; the observers themselves are built on the app's first execution (or at worker
start), when ``app.conf`` is final.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable.config import ReliableSettings, settings_for
from celery_reliable.errors import MissingDependency

logger = logging.getLogger("celery_reliable.wiring")

_INSTALLED_ATTR = "_reliable_installed"
_OBSERVERS_ATTR = "_reliable_observers"
_lock = threading.Lock()

#: Added to every app with a ReliableTask, by name: Celery loads a bootstep from its
#: dotted name when a worker builds its blueprint, so nothing here imports the worker.
WORKER_STEP = "celery_reliable.worker.bootstep:ReliableWorkerStep"
CONSUMER_STEP = "celery_reliable.delivery.bad_messages:BadMessages"


def install(app: Celery) -> None:
    """Once per app: the worker bootsteps and the lazy observer set-up."""
    if app.__dict__.get(_INSTALLED_ATTR):
        return
    with _lock:
        if app.__dict__.get(_INSTALLED_ATTR):
            return
        app.steps["worker"].add(WORKER_STEP)
        app.steps["consumer"].add(CONSUMER_STEP)
        setattr(app, _INSTALLED_ATTR, True)


def observers_for(app: Celery, *, strict: bool = False) -> list[Any]:
    """The app's observers, built on first use from its settings.

    ``strict`` (the worker at start-up): a feature the app configured on purpose whose
    library is missing raises :class:`MissingDependency`, which stops the worker with
    one line naming the extra to install. Elsewhere (eager calls, scripts) the feature
    is off and the same line is logged as an error.
    """
    observers: list[Any] | None = app.__dict__.get(_OBSERVERS_ATTR)
    if observers is not None and not strict:
        return observers
    with _lock:
        observers = app.__dict__.get(_OBSERVERS_ATTR)
        if observers is None or strict:
            missing = _missing_libraries(settings_for(app))
            if missing and strict:
                raise missing[0]
            for error in missing:
                logger.error("celery_reliable: %s; the feature is off", error)
        if observers is None:
            observers = _build_observers(app)
            setattr(app, _OBSERVERS_ATTR, observers)
    return observers


#: Features that need an optional library: (setting, library module, pip extra, feature).
#: (statsd is a core dependency; the store's driver is checked when the store is built.)
_OPTIONAL_FEATURES = (
    ("reliable_sentry", "sentry_sdk", "sentry", "Sentry reports (reliable_sentry=True)"),
)


def _missing_libraries(settings: ReliableSettings) -> list[MissingDependency]:
    """Features the app set on purpose whose library cannot be imported."""
    enabled = {"reliable_sentry": settings.sentry}
    return [
        MissingDependency(feature, library, extra=extra)
        for setting, library, extra, feature in _OPTIONAL_FEATURES
        if setting in settings.explicit
        and enabled[setting]
        and importlib.util.find_spec(library) is None
    ]


def _build_observers(app: Celery) -> list[Any]:
    from celery_reliable.observers.logging import LoggingObserver
    from celery_reliable.store import store_for

    settings = settings_for(app)
    built: list[Any] = []
    if settings.log_outcomes:
        built.append(LoggingObserver(app))
    try:
        store = store_for(app)
    except (ImproperlyConfigured, MissingDependency) as exc:
        # Outside a worker (which refuses to start on this): no dead letters, said once.
        logger.error("celery_reliable: no dead letters: %s", exc)
        store = None
    if store is not None:
        from celery_reliable.observers.dead_letters import DeadLetterObserver

        built.append(DeadLetterObserver(app, store))
        if settings.history:
            from celery_reliable.observers.history import HistoryObserver

            built.append(HistoryObserver(app, settings.history_interval))
    if settings.statsd_host is not None:
        setting = f"reliable_statsd_host {settings.statsd_host!r}"
        built.extend(_optional("statsd", lambda: _statsd(app), setting))
    if settings.sentry:
        built.extend(_optional("sentry_sdk", lambda: _sentry(app), "reliable_sentry"))
    for observer in built:
        observer.connect()
    return built


def _statsd(app: Celery) -> Any:
    from celery_reliable.observers.statsd import StatsdObserver

    return StatsdObserver(app, settings_for(app))


def _sentry(app: Celery) -> Any:
    from celery_reliable.observers.sentry import SentryObserver

    return SentryObserver(app)


def _optional(library: str, build: Callable[[], Any], setting: str) -> list[Any]:
    """An observer of an optional library: none if it is not installed (a default
    feature: say so at DEBUG; one set on purpose was refused above); none, and one
    warning naming ``setting``, if it cannot start (a StatsD host that does not
    resolve): the tasks run on, without it."""
    try:
        return [build()]
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == library:
            logger.debug("%s is not installed: its observer is off", library)
            return []
        raise
    except OSError as exc:
        what = "does not resolve" if isinstance(exc, socket.gaierror) else "cannot be used"
        logger.warning(
            "%s observer off: %s %s (%s); this process reports nothing through it until "
            "the setting is fixed and the worker restarted",
            library,
            setting,
            what,
            exc,
        )
        return []


def forget_observers(app: Celery) -> None:
    """Disconnect the app's observers and forget them (``testing.reset``): the next
    execution builds them again from the settings."""
    with _lock:
        observers = app.__dict__.pop(_OBSERVERS_ATTR, None) or ()
    for observer in observers:
        stop = getattr(observer, "stop", None)
        if stop is not None:
            stop()
        observer.disconnect()


def activate_history(app: Celery) -> None:
    """Turn the app's outcome history on in this process (a worker starts)."""
    for observer in observers_for(app):
        activate = getattr(observer, "activate", None)
        if activate is not None:
            activate()


def activate_history_everywhere() -> None:
    """A prefork pool child starts: every history recorder of this process records
    what the child runs."""
    history = sys.modules.get("celery_reliable.observers.history")
    if history is not None:
        history.activate_all()


def flush_history(app: Celery, *, final: bool = True) -> None:
    """Write the app's outcome history now; ``final``: and stop recording and the
    background writer. Nothing to do if no execution built the observers."""
    for observer in app.__dict__.get(_OBSERVERS_ATTR) or ():
        if getattr(observer, "stop", None) is None:
            continue
        if final:
            observer.stop()
        else:
            observer.flush()


def flush_history_everywhere() -> None:
    """A prefork pool child exits: every history recorder of this process writes what
    it counted."""
    history = sys.modules.get("celery_reliable.observers.history")
    if history is not None:
        history.flush_all()


def ensure_observers(app: Celery) -> None:
    """Build the app's observers before its first execution announces its start (an
    observer connected while the start is being sent would miss it). Cheap after the
    first time: one dict lookup on the app."""
    if _OBSERVERS_ATTR not in app.__dict__:
        observers_for(app)
