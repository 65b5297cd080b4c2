"""The docs stay true: tables in docs/ are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from celery_reliable.backoff import delay_table, exponential, fixed, polynomial
from celery_reliable.outcomes import Outcome
from tests.docs_blocks import marked_block

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"


def _table(text: str, start: str, end: str) -> list[list[str]]:
    block = text[text.index(start) : text.index(end)]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_backoff_table_matches_the_strategies() -> None:
    rows = _table((DOCS / "backoff.md").read_text(), "<!-- backoff-table", "<!-- /backoff-table")
    strategies = [
        exponential(),
        exponential(base=3, factor=2, cap=3600),
        polynomial(),
        fixed(30),
    ]
    expected = [delay_table(s, 10) for s in strategies]
    assert [int(r[0]) for r in rows] == list(range(1, 11))
    for column, values in enumerate(expected, start=1):
        assert [float(r[column]) for r in rows] == [float(v) for v in values]


def test_outcome_tables_name_every_outcome_and_its_state() -> None:
    for path in (DOCS / "outcomes.md", README):
        text = path.read_text()
        for outcome in Outcome:
            row = re.search(rf"^\| `{outcome.name}` \|.*$", text, re.MULTILINE)
            assert row, f"{path.name} has no row for {outcome.name}"
            assert f"`{outcome.state}`" in row.group(0), (path.name, outcome.name)


def _gate_app() -> Any:
    from celery import Celery

    app = Celery("docs-gates", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.reliable_database_url = None
    app.conf.reliable_statsd_host = "127.0.0.1"
    return app


@pytest.mark.usefixtures("no_shared_tasks")
def test_cli_md_waiver_example_waives_idempotency() -> None:
    from celery_reliable import ReliableTask, cancel_on
    from celery_reliable.audit.gates import Status, check

    app = _gate_app()
    code = marked_block(DOCS / "cli.md", "cli-waive-example")
    exec(code, {"app": app, "ReliableTask": ReliableTask, "cancel_on": cancel_on})
    [audit] = check(app).tasks
    assert audit.gate("idempotency").status is Status.WAIVED
    assert audit.gate("idempotency").reason == "reads only: running it twice changes nothing"
    assert audit.passed


@pytest.mark.usefixtures("no_shared_tasks")
def test_cli_md_library_example_asserts_on_the_findings() -> None:
    from celery_reliable import ReliableTask

    app = _gate_app()
    code = marked_block(DOCS / "cli.md", "cli-library-example")
    namespace: dict[str, Any] = {"app": app}
    exec(code, namespace)

    @app.task(base=ReliableTask, name="docs.bare", shared=False)
    def bare() -> None: ...

    with pytest.raises(AssertionError, match=r"docs\.bare"):
        namespace["test_every_task_is_production_ready"]()


def test_storage_md_history_example(tmp_path: Path) -> None:
    from celery import Celery

    from celery_reliable.store import store_for
    from celery_reliable.store.history import MinuteCounts
    from celery_reliable.store.timeutil import utcnow

    app = Celery("docs-history", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = f"sqlite:///{tmp_path}/store.sqlite3"
    history = store_for(app).history  # type: ignore[union-attr]
    minute = utcnow().replace(second=0, microsecond=0)
    for outcome, count in (("succeeded", 98), ("failed", 2)):
        counts = MinuteCounts()
        for _ in range(count):
            counts.add(0.3)
        history.add({("shop.charge", minute, "celery", outcome): counts})
    namespace: dict[str, Any] = {"app": app}
    exec(marked_block(DOCS / "storage.md", "storage-history-example"), namespace)
    summary = namespace["summary"]
    assert summary.counts == {"succeeded": 98, "failed": 2}
    assert summary.rate("failed") == 0.02
    assert 0.1 < summary.median_duration <= 0.3
