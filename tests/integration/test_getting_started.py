"""docs/getting-started.md's ``tasks.py``, as a reader copies it: run by a real worker
on its embedded defaults (SQLite broker and results), its first run is retried and its
second succeeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from celery_reliable import Outcome
from celery_reliable.results import wait_for_outcome
from celery_reliable.signals import task_outcome
from tests.docs_blocks import DOCS, marked_block
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration


def test_the_getting_started_task_is_retried_once_then_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = marked_block(DOCS / "getting-started.md", "getting-started-app")
    (tmp_path / "tasks.py").write_text(code)
    monkeypatch.chdir(tmp_path)  # its SQLite files are relative to where it runs
    spec = importlib.util.spec_from_file_location("getting_started_tasks", tmp_path / "tasks.py")
    assert spec is not None and spec.loader is not None
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    heard: list[Outcome] = []

    def hear(sender: Any = None, **fields: Any) -> None:
        if sender is not None and sender.name == tasks.send_welcome_email.name:
            heard.append(fields["outcome"])

    task_outcome.connect(hear, weak=False, dispatch_uid="getting-started")
    try:
        with embedded_worker(tasks.app, concurrency=2):
            result = tasks.send_welcome_email.delay(42)
            assert wait_for_outcome(result, timeout=30) == "SUCCESS"
            assert result.get(timeout=5) == "welcome email sent to user 42"
    finally:
        task_outcome.disconnect(dispatch_uid="getting-started")
    assert heard == [Outcome.RETRIED, Outcome.SUCCEEDED]
    assert (tmp_path / "celery_reliable.sqlite3").exists()
