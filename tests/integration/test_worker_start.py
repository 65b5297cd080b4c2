"""What stops a worker at start, with one line saying why and how to fix it."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery.exceptions import ImproperlyConfigured

from celery_reliable import ReliableTask, retry_on
from celery_reliable.worker.misconfigured import WorkerMisconfigured
from celery_reliable.worker.receivers import declarations_without_reliable_task
from tests.support.celery_apps import new_redis_db
from tests.support.workers import embedded_worker, run_worker_to_exit

pytestmark = pytest.mark.integration


def test_declarations_on_a_plain_task_stop_an_embedded_worker(make_app: Any) -> None:
    app = make_app("ignored_embedded")

    @app.task(name="ie.plain", shared=False)
    @retry_on(ConnectionError, attempts=3)
    def plain() -> None:
        return None

    @app.task(base=ReliableTask, shared=False, name="ie.reliable")
    @retry_on(ConnectionError, attempts=3)
    def reliable() -> None:
        return None

    assert declarations_without_reliable_task(app) == ["ie.plain"]
    with (
        pytest.raises(WorkerMisconfigured, match=r"\['ie.plain'\].*add base=ReliableTask") as stop,
        embedded_worker(app),
    ):
        pass
    assert isinstance(stop.value.cause, ImproperlyConfigured)


def test_limits_on_a_broker_without_redis_stop_the_worker(make_app: Any) -> None:
    """Limits need somewhere every worker sees: on a broker that is not Redis, with no
    reliable_limits_url, the worker refuses to start rather than fail every job."""
    from celery_reliable.limits import concurrency

    app = make_app("limits_nowhere")
    app.conf.broker_url = "memory://"

    @app.task(base=ReliableTask, shared=False, name="ln.sync", timeout=10, limits=[concurrency(2)])
    def sync() -> None:
        return None

    with (
        pytest.raises(
            WorkerMisconfigured,
            match=r"^tasks \['ln.sync'\]: limits=\[\.\.\.\] need somewhere every worker sees: "
            r"the broker \(memory\) is not Redis, so set reliable_limits_url to a Redis URL",
        ),
        embedded_worker(app),
    ):
        pass


def test_declarations_on_a_plain_task_stop_a_worker_process(redis_url: str) -> None:
    """The app has no ReliableTask at all: the check still runs (worker_init)."""
    returncode, output = run_worker_to_exit(
        "tests.support.apps.ignored_declarations",
        {"RELIABLE_TEST_BROKER": new_redis_db(redis_url)},
    )
    assert returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "base=ReliableTask" in line]
    assert lines == [
        "celery_reliable: the worker cannot start: tasks ['ignored.send'] declare "
        "retry_on/discard_on/cancel_on but are not ReliableTasks, so the declarations "
        "would do nothing: add base=ReliableTask to their @app.task"
    ]


def test_a_prefork_worker_on_the_embedded_broker_runs_its_jobs(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker step's threads start after the pool forked its children: the
    queue-depth sampler, started earlier, held SQLAlchemy's mapper lock across the fork
    (its first query on kombu's SQLAlchemy transport) and a child hung on it at its
    first result write, until the hard time limit (found by `make demo`)."""
    from celery_reliable.results import wait_for_outcome
    from celery_reliable.testing.statsd import StatsdLines
    from tests.support.workers import celery_worker

    statsd = StatsdLines()
    env = {"RELIABLE_TEST_DATA": str(tmp_path), "RELIABLE_TEST_STATSD_PORT": str(statsd.port)}
    for name, value in env.items():  # for this test only: every helper app reads them
        monkeypatch.setenv(name, value)
    try:
        from tests.support.apps import sqla_broker as sqla_broker_app

        # Celery 5.4's database backend creates its tables once per process, for the
        # first database only: another test's went first.
        sqla_broker_app.create_result_tables()
        with celery_worker("tests.support.apps.sqla_broker", env, concurrency=2) as worker:
            results = [sqla_broker_app.echo.delay(n) for n in range(6)]
            states = [wait_for_outcome(r, timeout=15) for r in results]
            assert states == ["SUCCESS"] * 6, worker.output
            statsd.wait_for(r"celery\.queue\.celery\.depth:\d+\|g")
    finally:
        statsd.close()


def test_a_misspelt_prefix_is_a_warning_at_worker_start(make_app: Any) -> None:
    """Not an error (the key is not ours), but what it sets stays off: said once, as the
    worker starts, with the key meant. The host's own settings are never named."""
    app = make_app(
        "misspelt_prefix", reliabel_unclassified="retry", result_backend_always_retry=True
    )

    @app.task(base=ReliableTask, shared=False, name="mp.reliable")
    def reliable() -> None:
        return None

    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("celery_reliable.worker")
    logger.addHandler(handler)
    try:
        with embedded_worker(app):
            pass
    finally:
        logger.removeHandler(handler)
    assert [(r.levelno, r.getMessage()) for r in seen] == [
        (
            logging.WARNING,
            "celery_reliable: the setting 'reliabel_unclassified' is not read: did you mean "
            "'reliable_unclassified'? (the settings: "
            "https://example.invalid/celery-reliable/docs/configuration/)",
        )
    ]
