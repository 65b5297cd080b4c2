"""One way for a helper app to take its servers from the environment the test gives its
worker process (and the test process, which imports the same module to publish):

* ``RELIABLE_TEST_BROKER``: the broker, and the result backend unless
  ``RELIABLE_TEST_BACKEND`` names another;
* ``RELIABLE_TEST_STORE``: the store's database URL (``reliable_database_url``);
* ``RELIABLE_TEST_STATSD_HOST``, ``RELIABLE_TEST_STATSD_PORT``: where StatsD lines go;
* ``RELIABLE_TEST_LIMITS``: where limits live (``reliable_limits_url``; empty: the
  broker's Redis).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

#: Settings read from the environment: setting -> (variable, conversion).
FROM_ENV: dict[str, tuple[str, Any]] = {
    "reliable_database_url": ("RELIABLE_TEST_STORE", str),
    "reliable_statsd_host": ("RELIABLE_TEST_STATSD_HOST", lambda value: value or None),
    "reliable_statsd_port": ("RELIABLE_TEST_STATSD_PORT", int),
    "reliable_limits_url": ("RELIABLE_TEST_LIMITS", lambda value: value or None),
}

#: What every helper app's worker does the same way.
COMMON: dict[str, Any] = {
    "worker_hijack_root_logger": False,
    "broker_connection_retry_on_startup": True,
}


class OwnTasksCelery(Celery):
    """A Celery app whose ``@app.task`` is not shared unless asked (``shared=True``).

    Celery's default, ``shared=True``, adds the task to every app finalized later in
    the process: a test process imports helper apps to publish, and their tasks then
    joined the apps of later test modules, where a task of the same name (``ob.mark``)
    was silently not registered and the helper's body ran instead, counting its runs
    in another Redis database (DuplicateTaskNameWarning; the suite now fails on it).
    """

    def task(self, *args: Any, **opts: Any) -> Any:
        opts.setdefault("shared", False)
        return super().task(*args, **opts)


def helper_app(
    name: str,
    *,
    broker: str | None = None,
    backend: str | None = None,
    defaults: dict[str, Any] | None = None,
    set_as_current: bool = True,
    **conf: Any,
) -> Celery:
    """The helper app ``name``. Its settings, each over the ones before: :data:`COMMON`;
    ``defaults``; the environment's (:data:`FROM_ENV`); ``conf``, what the app itself
    fixes. A store must be given by one of them (``None`` for an app without one)."""
    broker = broker or os.environ["RELIABLE_TEST_BROKER"]
    backend = backend or os.environ.get("RELIABLE_TEST_BACKEND") or broker
    settings = {**COMMON, **(defaults or {})}
    for setting, (variable, convert) in FROM_ENV.items():
        if variable in os.environ:
            settings[setting] = convert(os.environ[variable])
    settings.update(conf)
    if "reliable_database_url" not in settings:
        raise KeyError(f"{name}: set RELIABLE_TEST_STORE (the store's database URL)")
    app = OwnTasksCelery(name, broker=broker, backend=backend, set_as_current=set_as_current)
    app.conf.update(settings)
    return app
