"""Steps in one process, one execution at a time (``perform_task``), on a real SQLite
store: the skip of a finished step's block (one-line bodies, exceptions, nesting, a
trace function already set), the cursor, ``atomic()`` inside a step, and the misuses
that raise.

Real workers, SIGKILL, retries and PostgreSQL: tests/integration/test_steps.py.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from celery_reliable import HeartbeatTimeout, Outcome, ReliableTask
from celery_reliable.errors import StepError
from celery_reliable.store import Store, store_for
from celery_reliable.testing import perform_task

metadata = sa.MetaData()
items = sa.Table("step_items", metadata, sa.Column("n", sa.Integer, primary_key=True))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Celery]:
    app = Celery("steps-unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.reliable_database_url = f"sqlite:///{tmp_path}/store.sqlite3"
    yield app
    app.close()


@pytest.fixture
def store(app: Celery) -> Iterator[Store]:
    store = store_for(app)
    assert store is not None
    store.ensure_schema()
    metadata.create_all(store.engine)
    yield store
    store.dispose()


def build(app: Celery, function: Any, **options: Any) -> Any:
    task = app.task(base=ReliableTask, bind=True, shared=False, **options)(function)
    assert task.name
    return task


def twice(task: Any, *args: Any) -> tuple[Any, Any]:
    """Two executions of one job (same task id, as a retry or redelivery has)."""
    first = perform_task(task, args=args, task_id="job-1")
    second = perform_task(task, args=args, task_id="job-1", attempt=2)
    return first, second


def written(store: Store) -> list[int]:
    with store.engine.connect() as connection:
        return list(connection.execute(sa.select(items.c.n).order_by(items.c.n)).scalars())


# ------------------------------------------------------------------------- skipping


def test_a_one_line_body_of_a_finished_step_is_skipped(app: Celery, store: Store) -> None:
    ran: list[str] = []

    def body(self: ReliableTask) -> list[str]:
        with self.step("a"): ran.append("a")  # fmt: skip  # noqa: E701
        with self.step("b") as b: ran.append("b")  # fmt: skip  # noqa: E701
        ran.append("after")
        return [b.name, str(b.skipped)]

    task = build(app, body, name="steps.one_line")
    first, second = twice(task)
    assert first.result == ["b", "False"]
    assert second.outcome is Outcome.SUCCEEDED and second.result == ["b", "True"]
    assert ran == ["a", "b", "after", "after"]


def test_a_skipped_step_binds_its_target_with_the_last_cursor(app: Celery, store: Store) -> None:
    ran: list[str] = []

    def body(self: ReliableTask) -> Any:
        with self.step("count") as counted:
            ran.append("count")
            counted.advance({"rows": 3, "ids": (1, 2)})
            ran.append("still in the block")
        ran.append("next")
        return counted.cursor

    task = build(app, body, name="steps.target")
    first, second = twice(task)
    # What JSON gives back, as a resumed execution reads it (a tuple comes back a list).
    assert first.result == second.result == {"rows": 3, "ids": [1, 2]}
    assert ran == ["count", "still in the block", "next", "next"]


def test_an_exception_leaves_the_step_unfinished_at_its_cursor(app: Celery, store: Store) -> None:
    seen: list[Any] = []

    def body(self: ReliableTask, fail: bool) -> str:
        with self.step("rows") as step:
            seen.append(step.cursor)
            for n in range((step.cursor or 0) + 1, 6):
                step.advance(n)
                if fail and n == 2:
                    raise RuntimeError("the source went away")
        return "done"

    task = build(app, body, name="steps.raises")
    failed = perform_task(task, args=(True,), task_id="job-1")
    assert failed.outcome is Outcome.FAILED
    [row] = store.steps.of_job(task.name, "job-1")
    assert (row.cursor, row.advances, row.finished) == ("2", 2, False)
    resumed = perform_task(task, args=(False,), task_id="job-1", attempt=2)
    assert resumed.result == "done"
    assert seen == [None, 2]  # not skipped: resumed from its cursor
    [row] = store.steps.of_job(task.name, "job-1")
    assert (row.cursor, row.advances, row.finished) == ("5", 5, True)


def test_nested_steps(app: Celery, store: Store) -> None:
    ran: list[str] = []

    def body(self: ReliableTask, fail: bool) -> None:
        with self.step("outer"):
            ran.append("outer")
            with self.step("inner"): ran.append("inner")  # fmt: skip  # noqa: E701
            with self.step("inner-2"):
                ran.append("inner-2")
                if fail:
                    raise RuntimeError("after the first inner step")
            ran.append("outer end")

    task = build(app, body, name="steps.nested")
    assert perform_task(task, args=(True,), task_id="job-1").outcome is Outcome.FAILED
    assert ran == ["outer", "inner", "inner-2"]
    # The outer step runs again; the inner step that finished is skipped.
    assert perform_task(task, args=(False,), task_id="job-1", attempt=2).outcome is (
        Outcome.SUCCEEDED
    )
    assert ran == ["outer", "inner", "inner-2", "outer", "inner-2", "outer end"]
    # Now the outer step finished: nothing inside it runs, not even its inner steps.
    perform_task(task, args=(False,), task_id="job-1", attempt=3)
    assert ran == ["outer", "inner", "inner-2", "outer", "inner-2", "outer end"]


def test_steps_in_a_loop_and_in_one_with_statement(app: Celery, store: Store) -> None:
    ran: list[str] = []

    def body(self: ReliableTask) -> None:
        for part in ("a", "b"):
            with self.step(f"part-{part}"):
                ran.append(part)
        with self.step("x") as x, self.step("y") as y:
            ran.append(f"{x.name}{y.name}")

    task = build(app, body, name="steps.loop")
    twice(task)
    assert ran == ["a", "b", "xy"]


def _traced_lines(code_name: str) -> tuple[list[int], Any]:
    """A trace function as a debugger or coverage sets it: it records the lines run
    in frames of ``code_name``."""
    lines: list[int] = []

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            lines.append(frame.f_lineno)
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_name == code_name else None

    return lines, tracer


def test_a_trace_function_already_set_is_put_back_and_keeps_tracing(
    app: Celery, store: Store
) -> None:
    ran: list[str] = []

    def traced_body(self: ReliableTask) -> int:
        with self.step("a"): ran.append("a")  # fmt: skip  # noqa: E701
        return sys._getframe().f_lineno  # the line after the block

    task = build(app, traced_body, name="steps.traced")
    perform_task(task, task_id="job-1")
    lines, tracer = _traced_lines("traced_body")
    before = sys.gettrace()
    sys.settrace(tracer)
    try:
        second = perform_task(task, task_id="job-1", attempt=2)
        after = sys.gettrace()
    finally:
        sys.settrace(before)
    assert after is tracer
    assert ran == ["a"] and second.outcome is Outcome.SUCCEEDED
    # The tracer saw the line after the skipped block, in the same frame.
    assert second.result in lines, (second.result, lines)


def test_advance_takes_json_values_only(app: Celery, store: Store) -> None:
    errors: list[str] = []

    def body(self: ReliableTask) -> Any:
        with self.step("rows") as step:
            step.advance([1, "a", None, {"k": 2.5}])
            for bad in (object(), {1, 2}, math.nan, b"bytes"):
                try:
                    step.advance(bad)
                except TypeError as exc:
                    errors.append(str(exc))
            return step.cursor

    task = build(app, body, name="steps.json")
    done = perform_task(task, task_id="job-1")
    assert done.result == [1, "a", None, {"k": 2.5}]
    assert len(errors) == 4
    assert all("advance() takes a JSON value" in e and "'rows'" in e for e in errors), errors
    [row] = store.steps.of_job(task.name, "job-1")
    assert row.advances == 1


def test_an_advance_in_atomic_commits_with_it_or_not_at_all(app: Celery, store: Store) -> None:
    def body(self: ReliableTask) -> list[Any]:
        cursors = []
        with self.step("rows") as step:
            with self.atomic() as session:
                session.execute(items.insert().values(n=1))
                step.advance(1)
                cursors.append(step.cursor)  # not yet: the transaction is open
            cursors.append(step.cursor)
            with contextlib.suppress(RuntimeError), self.atomic() as session:
                session.execute(items.insert().values(n=2))
                step.advance(2)
                raise RuntimeError("rolled back")
            cursors.append(step.cursor)
        return cursors

    task = build(app, body, name="steps.atomic")
    assert perform_task(task, task_id="job-1").result == [None, 1, 1]
    assert written(store) == [1]
    [row] = store.steps.of_job(task.name, "job-1")
    assert (row.cursor, row.advances, row.finished) == ("1", 1, True)


def test_a_keyed_job_resumes_after_a_retry_and_writes_each_item_once(
    app: Celery, store: Store
) -> None:
    """Inside a step, atomic() holds the receipt instead of completing it: a retry
    after item 2 runs (it is not a DUPLICATE) and continues at item 3."""

    def body(self: ReliableTask, batch: str, fail_after: int | None) -> int:
        with self.step("rows") as step:
            for n in range((step.cursor or 0) + 1, 6):
                with self.atomic() as session:
                    session.execute(items.insert().values(n=n))
                    step.advance(n)
                if n == fail_after:
                    raise RuntimeError(f"after item {n}")
        return int(step.cursor)

    task = build(app, body, name="steps.keyed", timeout=60, idempotency_key="batch:{batch}")
    first = perform_task(task, args=("b1", 2), task_id="t-1")
    assert first.outcome is Outcome.FAILED
    receipt = store.receipts.get(task.name, "batch:b1")
    assert receipt is None  # released, not marked succeeded by the atomic() blocks
    assert perform_task(task, args=("b1", None), task_id="t-2").result == 5
    assert written(store) == [1, 2, 3, 4, 5]
    done = store.receipts.get(task.name, "batch:b1")
    assert done is not None and done.state == "succeeded" and done.result == "5"
    # The job is its key: another task id with the same key is a DUPLICATE.
    assert perform_task(task, args=("b1", None), task_id="t-3").outcome is Outcome.DUPLICATE


def test_an_advance_is_a_heartbeat(app: Celery, store: Store) -> None:
    from celery_reliable.execution import current_execution

    def body(self: ReliableTask) -> list[bool]:
        execution = current_execution()
        assert execution is not None and execution.heartbeat is not None
        beat = execution.heartbeat
        renewed = []
        with self.step("rows") as step:
            for n in (1, 2):
                before = beat.last
                if n == 1:
                    step.advance(n)  # outside atomic(): a beat, written to the store
                else:
                    with self.atomic():
                        step.advance(n)  # inside: a beat the transaction's hold renews
                renewed.append(beat.last > before)
        return renewed

    task = build(app, body, name="steps.beats", heartbeat_timeout=5, idempotency_key="b")
    assert perform_task(task).result == [True, True]


def test_atomic_before_the_first_step_is_warned_about(
    app: Celery, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    def body(self: ReliableTask) -> None:
        with self.atomic() as session:
            session.execute(items.insert().values(n=1))
        with self.step("rows"):
            pass

    task = build(app, body, name="steps.early_atomic", timeout=60, idempotency_key="e")
    assert perform_task(task).outcome is Outcome.SUCCEEDED
    assert "an atomic() block before the first step already marked" in caplog.text


# -------------------------------------------------------------------------- misuses


def test_a_step_outside_an_execution_raises(app: Celery, store: Store) -> None:
    def body(self: ReliableTask) -> None:
        with self.step("a"):
            pass

    task = build(app, body, name="steps.direct")
    with pytest.raises(StepError, match="outside an execution"):
        task()
    with pytest.raises(StepError, match="outside an execution"):
        task.step("a")


@pytest.mark.parametrize(
    ("misuse", "message"),
    [
        ("exit_stack", "must be entered by a with statement"),
        ("twice", "already entered in this execution"),
        ("in_atomic", "inside self.atomic()"),
        ("advance_after", "has ended"),
    ],
)
def test_misuses_raise_on_the_first_run(
    app: Celery, store: Store, misuse: str, message: str
) -> None:
    def body(self: ReliableTask) -> None:
        if misuse == "exit_stack":
            with contextlib.ExitStack() as stack:
                stack.enter_context(self.step("a"))
        elif misuse == "twice":
            with self.step("a"):
                pass
            with self.step("a"):
                pass
        elif misuse == "in_atomic":
            with self.atomic(), self.step("a"):
                pass
        else:
            with self.step("a") as step:
                pass
            step.advance(1)

    task = build(app, body, name=f"steps.{misuse}")
    done = perform_task(task)
    assert done.outcome is Outcome.FAILED
    assert isinstance(done.exc, StepError) and message in str(done.exc), done.exc


@pytest.mark.parametrize("name", ["", 42, "x" * 256])
def test_a_bad_step_name_raises(app: Celery, store: Store, name: Any) -> None:
    def body(self: ReliableTask) -> None:
        with self.step(name):
            pass

    done = perform_task(build(app, body, name="steps.bad_name"))
    assert isinstance(done.exc, (TypeError, ValueError)), done.exc
    assert "self.step(name)" in str(done.exc)


# ---------------------------------------------------------------------------- the docs


def test_the_docs_example_resumes_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.docs_blocks import DOCS, marked_block

    monkeypatch.chdir(tmp_path)  # the example's app keeps the default store file here
    # A module name of its own: the heartbeat example's shared task is import_rows too.
    namespace: dict[str, Any] = {"__name__": "long_tasks_steps_example"}
    exec(marked_block(DOCS / "long-tasks.md", "long-tasks-steps"), namespace)
    task, table = namespace["import_rows"], namespace["imported"]
    store = store_for(task.app)
    assert store is not None
    store.ensure_schema()
    table.metadata.create_all(store.engine)
    checked: list[int] = []
    died: list[int] = []
    source = namespace["rows_after"]

    def dies_once_after_row_40(import_id: int, cursor: Any) -> Any:
        for row in source(import_id, cursor):
            yield row
            if row[0] == 40 and not died:
                died.append(40)
                raise HeartbeatTimeout("no heartbeat for 31s (heartbeat_timeout=30s)")

    namespace["check_source"] = checked.append
    namespace["rows_after"] = dies_once_after_row_40
    try:
        first = perform_task(task, args=(7,))
        assert first.outcome is Outcome.RETRIED
        stopped = store.steps.get(task.name, "import:7", "rows")
        assert stopped is not None and stopped.cursor == "40" and not stopped.finished
        second = perform_task(task, args=(7,), attempt=2)
        assert second.outcome is Outcome.SUCCEEDED and second.result == 100
        assert checked == [7]  # "validate" ran once
        with store.engine.connect() as connection:
            ids = connection.execute(sa.select(table.c.id).order_by(table.c.id)).scalars()
            assert list(ids) == list(range(1, 101))
    finally:
        store.dispose()
