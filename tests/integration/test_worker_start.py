"""What stops a worker at start, with one line saying why and how to fix it."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from celery.exceptions import ImproperlyConfigured

from celery_reliable import ReliableTask, retry_on
from celery_reliable.worker import WorkerMisconfigured, declarations_without_reliable_task
from tests.conftest import embedded_worker, new_redis_db
from tests.worker_process import ROOT

pytestmark = pytest.mark.integration


def test_declarations_on_a_plain_task_stop_an_embedded_worker(make_app: Any) -> None:
    app = make_app("ignored_embedded")

    @app.task(name="ie.plain")
    @retry_on(ConnectionError, attempts=3)
    def plain() -> None:
        return None

    @app.task(base=ReliableTask, name="ie.reliable")
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


def test_declarations_on_a_plain_task_stop_a_worker_process(redis_url: str) -> None:
    """The app has no ReliableTask at all: the check still runs (worker_init)."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "tests.integration.ignored_declarations_app",
            "worker",
            "--pool",
            "solo",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RELIABLE_TEST_BROKER": new_redis_db(redis_url),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "base=ReliableTask" in line]
    assert lines == [
        "celery_reliable: the worker cannot start: tasks ['ignored.send'] declare "
        "retry_on/discard_on/cancel_on but are not ReliableTasks, so the declarations "
        "would do nothing: add base=ReliableTask to their @app.task"
    ]
