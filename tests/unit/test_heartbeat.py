"""Heartbeats without a worker process: the option, the lease, the board, the
monitor ending a silent body on a real thread (the threads pool's case), and the
prefork kill's outcome and message settled on a stand-in for Celery's request.

The prefork and solo pools, SIGKILL and leases under a real store:
tests/integration/test_heartbeat.py.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable import HeartbeatTimeout, Outcome, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.longrun import board
from celery_reliable.longrun.heartbeat import Heartbeat
from celery_reliable.longrun.monitor import HeartbeatMonitor
from celery_reliable.testing import capture_outcomes, perform_task


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("hb-unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.reliable_database_url = None
    yield app
    app.close()


def noop() -> None:
    return None


def charge(order: int) -> None:
    return None


def build(app: Celery, function: Any, **options: Any) -> Any:
    task = app.task(base=ReliableTask, shared=False, **options)(function)
    assert task.name  # the class is built here
    return task


@pytest.mark.parametrize("value", [0, -1, "30", float("inf")])
def test_a_bad_heartbeat_timeout_fails_when_the_class_is_built(app: Celery, value: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="heartbeat_timeout"):
        build(app, noop, name="hb.bad", heartbeat_timeout=value)


def test_a_heartbeat_timeout_not_below_the_time_limit_is_refused(app: Celery) -> None:
    with pytest.raises(ImproperlyConfigured, match="not shorter than its hard time limit"):
        build(app, noop, name="hb.pointless", time_limit=10, heartbeat_timeout=10)


def test_a_keyed_task_with_a_heartbeat_leases_for_the_beat_not_the_time_limit(
    app: Celery,
) -> None:
    app.conf.reliable_database_url = "sqlite:///:memory:"

    keyed = build(
        app,
        charge,
        name="hb.keyed",
        timeout=3600,
        heartbeat_timeout=10,
        idempotency_key="c:{order}",
    )
    assert keyed._reliable_lease == 10 + 10 + 5  # timeout + grace (the timeout, 2 to 30 s) + 5
    plain = build(app, charge, name="hb.plain_keyed", timeout=3600, idempotency_key="c:{order}")
    assert plain._reliable_lease == 3600 + 360 + 5  # the hard limit + 5


def test_a_heartbeat_alone_is_enough_for_a_key(app: Celery) -> None:
    app.conf.reliable_database_url = "sqlite:///:memory:"
    task = build(
        app,
        charge,
        name="hb.key_only",
        heartbeat_timeout=5,
        idempotency_key="k:{order}",
    )
    assert task._reliable_lease == 5 + 5 + 5


def test_heartbeat_outside_an_execution_does_nothing_and_checks_progress(app: Celery) -> None:
    task = build(app, noop, name="hb.outside", bind=False, heartbeat_timeout=5)
    task.heartbeat(progress=0.5, row=3)  # no execution: nothing to renew, no error
    with pytest.raises(ValueError, match="from 0 to 1"):
        task.heartbeat(progress=1.5)
    with pytest.raises(TypeError, match="a number from 0 to 1"):
        task.heartbeat(progress="half")


def test_perform_task_runs_a_beating_body(app: Celery) -> None:
    def body(self: Any) -> str:
        for n in range(3):
            self.heartbeat(progress=n / 3, row=n)
        return "done"

    task = build(app, body, name="hb.performed", bind=True, heartbeat_timeout=5)
    assert perform_task(task).outcome is Outcome.SUCCEEDED


@pytest.fixture
def watched_board() -> Iterator[HeartbeatMonitor]:
    path = board.open_board()
    monitor = HeartbeatMonitor(path, pool_processes=set)
    monitor.start()
    try:
        yield monitor
    finally:
        monitor.stop()
        board.close_board(path)
    assert not os.path.exists(path)


def test_the_monitor_raises_heartbeat_timeout_in_a_silent_thread(
    watched_board: HeartbeatMonitor,
) -> None:
    """The threads pool: the exception is raised in the body's thread at its next
    Python instruction (a busy loop here; a sleep would end first)."""
    caught: list[BaseException] = []
    iterations = [0]

    def silent_body() -> None:
        while True:
            iterations[0] += 1

    def execution() -> None:
        beat = Heartbeat("hb.silent", "silent-1", timeout=0.5)
        try:
            beat.run(silent_body, (), {})
        except HeartbeatTimeout as exc:
            caught.append(exc)
        finally:
            beat.end()

    thread = threading.Thread(target=execution, daemon=True)  # a failure must not hang the run
    started = time.monotonic()
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the silent body was never interrupted"
    assert len(caught) == 1 and iterations[0] > 0
    assert 0.5 <= time.monotonic() - started < 5
    assert os.listdir(watched_board.path) == []  # the execution took its file away


def test_the_monitor_leaves_a_beating_thread_alone(watched_board: HeartbeatMonitor) -> None:
    """Beats every 0.1 s for 2 s with a 0.5 s timeout; then goes silent, and only then
    is interrupted: the later interrupt proves the monitor was watching all along."""
    beats = [0]
    phases: list[str] = []

    def body(beat: Heartbeat) -> None:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            beat.beat(None, {})
            beats[0] += 1
            time.sleep(0.1)
        phases.append("beating done")
        while True:
            pass

    def execution() -> None:
        beat = Heartbeat("hb.beating", "beating-1", timeout=0.5)
        try:
            beat.run(body, (beat,), {})
        except HeartbeatTimeout:
            phases.append("interrupted")
        finally:
            beat.end()

    thread = threading.Thread(target=execution, daemon=True)  # a failure must not hang the run
    thread.start()
    thread.join(15)
    assert phases == ["beating done", "interrupted"]
    assert beats[0] >= 10


def test_a_late_interrupt_after_the_body_ended_changes_nothing(
    watched_board: HeartbeatMonitor,
) -> None:
    """The exception is only raised while the body runs: a beat that ended is off the
    board, and one outside its body is never overdue."""
    beat = Heartbeat("hb.ended", "ended-1", timeout=0.01)
    assert beat.run(lambda: "ok", (), {}) == "ok"
    time.sleep(0.05)
    assert not beat.overdue()  # silent, but out of its body
    beat.end()
    assert os.listdir(watched_board.path) == []


def test_retry_on_heartbeat_timeout_is_an_ordinary_rule(app: Celery) -> None:
    @retry_on(HeartbeatTimeout, wait=fixed(1), attempts=3)
    def body() -> None:
        raise HeartbeatTimeout("no heartbeat for 3.0s (heartbeat_timeout=2s)")

    task = build(app, body, name="hb.ruled", heartbeat_timeout=2)
    with capture_outcomes() as seen:
        done = perform_task(task)
    assert done.outcome is Outcome.RETRIED
    assert seen[0].reason.startswith("HeartbeatTimeout")


def test_the_docs_example_runs(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.docs_blocks import DOCS, marked_block

    monkeypatch.chdir(tmp_path)  # the example's app keeps the default store file here
    namespace: dict[str, Any] = {}
    exec(marked_block(DOCS / "long-tasks.md", "long-tasks-heartbeat"), namespace)
    task = namespace["import_rows"]
    assert task.heartbeat_timeout == 30
    with capture_outcomes() as seen:
        done = perform_task(task, args=(["a", "b", "c"],))
    assert done.outcome is Outcome.SUCCEEDED and done.result == 3
    assert [e.outcome for e in seen] == [Outcome.SUCCEEDED]


def test_a_dead_worker_s_board_is_removed_when_the_next_worker_opens_its_own() -> None:
    import subprocess
    import sys
    import tempfile

    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead = int(done.stdout)  # a process that has exited
    where = "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
    left = tempfile.mkdtemp(prefix=f"celery_reliable-beats-{dead}-", dir=where)
    mine = board.open_board()
    try:
        assert not os.path.exists(left)
        assert os.path.basename(mine).startswith(f"celery_reliable-beats-{os.getpid()}-")
    finally:
        board.close_board(mine)


def test_an_execution_whose_board_is_gone_still_runs(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = board.open_board()
    board.close_board(path)
    board._current[:] = [path]  # a worker stopping: its board removed, its path still set
    try:
        beat = Heartbeat("hb.boardless", "boardless-1", timeout=5)
        assert beat.run(lambda: "ran", (), {}) == "ran"
        beat.beat(0.5, {})
        beat.end()
    finally:
        board._current.clear()
    assert "not on the heartbeat board" in caplog.text


class _Pool:
    def __init__(self) -> None:
        self.terminated: list[tuple[int, int]] = []

    def terminate_job(self, pid: int, sig: int) -> None:
        self.terminated.append((pid, sig))


class _Worker:
    hub = None  # no event loop: the kill runs in the calling thread

    def __init__(self) -> None:
        self.pool = _Pool()


class _Request:
    """What the kill reads of Celery's worker ``Request`` (a job running in pid 4242)."""

    _already_revoked = False
    _apply_result = None
    worker_pid = 4242

    def __init__(self, task: Any, acks_late: bool) -> None:
        from celery.app.task import Context

        self.task = task
        self.id = f"id-{time.monotonic_ns()}"
        self.name = task.name
        self.time_start = time.time() - 3.0
        self._context = Context(id=self.id, task=task.name, args=(), kwargs={}, retries=0)
        self.acknowledged = not acks_late  # without acks_late, acked on acceptance
        self.settled: list[str] = []
        self.events: list[str] = []

    def acknowledge(self) -> None:
        if not self.acknowledged:
            self.settled.append("ack")
            self.acknowledged = True

    def reject(self, requeue: bool = False) -> None:
        if not self.acknowledged:
            self.settled.append(f"reject(requeue={requeue})")
            self.acknowledged = True

    def send_event(self, type: str, **fields: Any) -> None:
        self.events.append(type)


def retried_once_stuck() -> Any:
    @retry_on(HeartbeatTimeout, attempts=2, wait=fixed(0.1))
    def stuck() -> None:
        return None

    return stuck


def kill(task: Any, acks_late: bool = True) -> tuple[_Worker, _Request, list[Any]]:
    """The heartbeat monitor's kill of ``task``'s running job; the outcomes it sent."""
    from celery.worker import state

    from celery_reliable.worker.stuck import kill_on_loop

    worker, request = _Worker(), _Request(task, acks_late)
    states: list[str] = []
    backend = task.backend
    original = backend.store_result

    def store_result(task_id: str, result: Any, state: str, *args: Any, **kw: Any) -> Any:
        states.append(state)
        return original(task_id, result, state, *args, **kw)

    backend.store_result = store_result
    state.active_requests.add(request)
    try:
        with capture_outcomes() as seen:
            kill_on_loop(worker)(request.id, 4242, "no heartbeat for 3s: killed")
    finally:
        state.active_requests.discard(request)
        del backend.store_result
    request.events[:0] = [f"stored {s}" for s in states]
    return worker, request, seen


def test_a_killed_job_is_decided_then_acked_and_never_stored_revoked(app: Celery) -> None:
    """The prefork kill (worker/stuck.py): the process is terminated with SIGKILL, the
    job goes straight to the outcome its rules give (here unclassified: FAILURE) and
    only then is its message acked; Celery is told it was revoked (so the pool's report
    of the terminated job announces nothing), REVOKED is never stored."""
    import signal

    from celery.worker import state

    task = build(app, noop, name="hb.killed", acks_late=True)
    worker, request, seen = kill(task)
    assert worker.pool.terminated == [(4242, signal.SIGKILL)]
    assert request._already_revoked and request not in state.active_requests
    assert [e.outcome for e in seen] == [Outcome.FAILED]
    assert "killed" in seen[0].reason and 2.5 < (seen[0].duration or 0) < 10
    assert request.events == ["stored FAILURE", "task-failed"]
    assert request.settled == ["ack"]
    assert app.AsyncResult(request.id).state == "FAILURE"


def test_a_killed_job_its_rules_retry_is_re_published_then_acked(app: Celery) -> None:
    task = build(app, retried_once_stuck(), name="hb.killed_retried", acks_late=True)
    _, request, seen = kill(task)
    assert [e.outcome for e in seen] == [Outcome.RETRIED]
    assert request.events == ["stored RETRY", "task-retried"]
    assert request.settled == ["ack"]


def test_a_killed_job_whose_retry_the_broker_refuses_is_given_back(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With acks_late the message is still the worker's when the outcome is decided: a
    retry that cannot be re-published gives it back to the broker, as for a body that
    raised (before, Celery's terminate had acked it, and the job ended FAILED)."""
    task = build(app, retried_once_stuck(), name="hb.killed_refused", acks_late=True)

    def refused(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(task, "apply_async", refused)
    _, request, seen = kill(task)
    assert [e.outcome for e in seen] == [Outcome.RETRIED]
    assert "the broker redelivers the message" in seen[0].reason
    assert request.settled == ["reject(requeue=True)"]


def test_a_killed_job_acked_on_acceptance_ends_failed_when_its_retry_is_refused(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = build(app, retried_once_stuck(), name="hb.killed_early_ack")

    def refused(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(task, "apply_async", refused)
    _, request, seen = kill(task, acks_late=False)
    assert [e.outcome for e in seen] == [Outcome.FAILED]
    assert "could not be re-published" in seen[0].reason
    assert request.events[-2:] == ["stored FAILURE", "task-failed"]
    assert request.settled == []  # acked when it started
