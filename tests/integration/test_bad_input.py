"""The bad-input matrix (docs/reliability.md): one test per row.

Each row gets a defined outcome (the task's state, its outcome, its dead letter where
one applies), one clear log line saying what went wrong and what to do, and a worker
that keeps running (a normal task sent afterwards succeeds).

Most rows run on the module's embedded worker (threads pool, real Redis, a real
SQLite and PostgreSQL store, a real UDP StatsD socket). The rows that need a worker
configured otherwise (a prefork pool with a pickle result backend, a store that cannot
be reached, a StatsD host that does not resolve, a database URL that stops the worker)
run ``tests/support/apps/bad_input.py`` in a real ``celery worker`` process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from celery import Celery
from celery.utils import uuid
from kombu.exceptions import EncodeError

from celery_reliable import Discard, Outcome, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.errors import DeadLetterError, IdempotencyKeyError, WrongArguments
from celery_reliable.results import wait_for_outcome
from celery_reliable.store import Store
from celery_reliable.store.dead_letters import DeadLetter
from tests.helpers import Calls, new_key, ready_store, tasks_in
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.servers import free_port
from tests.support.statsd import StatsdServer, running_statsd_server
from tests.support.waiting import wait_until
from tests.support.workers import (
    WorkerProcess,
    celery_worker,
    embedded_worker,
    run_worker_to_exit,
    settle,
)

pytestmark = pytest.mark.integration


class Flaky(Exception):
    pass


class Point:
    """An argument or a result JSON cannot hold."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y


calls = Calls()

#: The size of the 10 MB argument.
TEN_MB = 10 * 1024 * 1024


def _key_that_raises(*args: Any, **kwargs: Any) -> str:
    raise LookupError("no customer in these arguments")


def define(app: Any) -> SimpleNamespace:
    @app.task(base=ReliableTask, shared=False, name="bi.ok")
    def ok() -> str:
        return "ok"

    @app.task(base=ReliableTask, shared=False, name="bi.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(
        base=ReliableTask,
        shared=False,
        name="bi.keyed_by_function",
        timeout=10,
        idempotency_key=_key_that_raises,
    )
    def keyed_by_function(order: int) -> None:
        calls.bump(f"keyed_by_function:{order}")

    @app.task(
        base=ReliableTask,
        shared=False,
        name="bi.keyed_by_kwargs",
        timeout=10,
        idempotency_key="order:{order}",
    )
    def keyed_by_kwargs(**fields: Any) -> None:
        calls.bump(f"keyed_by_kwargs:{fields}")

    @app.task(base=ReliableTask, shared=False, name="bi.big", timeout=60, idempotency_key="{key}")
    def big(key: str, blob: str) -> int:
        if calls.bump(key) == 1:
            raise Discard("the first run refuses it")
        return len(blob)

    @app.task(base=ReliableTask, shared=False, name="bi.returns_point")
    def returns_point() -> Point:
        return Point(1, 2)

    @app.task(
        base=ReliableTask,
        shared=False,
        name="bi.returns_point_keyed",
        timeout=10,
        idempotency_key="{key}",
    )
    def returns_point_keyed(key: str) -> Point:
        calls.bump(key)
        return Point(1, 2)

    @app.task(base=ReliableTask, shared=False, name="bi.flaky")
    @retry_on(Flaky, wait=fixed(0.05), attempts=3)
    def flaky(key: str) -> None:
        calls.bump(key)
        raise Flaky("still down")

    return tasks_in(locals())


@pytest.fixture(scope="module")
def statsd_server() -> Iterator[StatsdServer]:
    with running_statsd_server() as server:
        yield server


@pytest.fixture(scope="module")
def env(make_app: Any, module_store_url: str, statsd_server: StatsdServer) -> Iterator[Any]:
    app = make_app(
        "bad-input",
        reliable_database_url=module_store_url,
        reliable_statsd_host="127.0.0.1",
        reliable_statsd_port=statsd_server.port,
    )
    tasks = define(app)
    store = ready_store(app)
    with embedded_worker(app):
        yield SimpleNamespace(app=app, store=store, server=statsd_server, **vars(tasks))


# -- what each row asserts --------------------------------------------------------------


def _lines(caplog: Any, text: str, ours: bool) -> list[logging.LogRecord]:
    """Records at WARNING or above that mention ``text``: celery_reliable's, or the rest."""
    return [
        r
        for r in list(caplog.records)
        if r.levelno >= logging.WARNING
        and r.name.startswith("celery_reliable") == ours
        and text in r.getMessage()
    ]


def one_line(env: Any, caplog: Any, text: str, celery_failure: bool = False) -> str:
    """The one line celery_reliable wrote about ``text`` (a task id), once it is there;
    with ``celery_failure``, Celery's own "raised unexpected" record (with its
    traceback) is the only other record about it, as for every FAILURE; else none.
    Counted once the worker has settled (a sentinel job ran after everything the job
    did), so that a second line would be there."""
    wait_until(
        lambda: _lines(caplog, text, ours=True),
        f"celery_reliable's line about {text}",
        timeout=10,
    )
    settle(env.app)
    ours = _lines(caplog, text, ours=True)
    assert len(ours) == 1, [r.getMessage() for r in ours]
    assert ours[0].exc_info is None, "a line, not a traceback"
    others = [r.getMessage() for r in _lines(caplog, text, ours=False)]
    if celery_failure:
        assert len(others) == 1 and "raised unexpected" in others[0], others
    else:
        assert others == []
    return ours[0].getMessage()


def dead_letter(store: Store, task_id: str) -> DeadLetter:
    found = wait_until(
        lambda: [d for d in store.dead_letters.list(limit=500) if d.task_id == task_id],
        f"the dead letter of {task_id}",
        timeout=10,
    )
    assert len(found) == 1, found
    return found[0]


def no_dead_letter(store: Store, task_id: str) -> None:
    assert not [d for d in store.dead_letters.list(limit=500) if d.task_id == task_id]


def worker_keeps_running(env: Any) -> None:
    assert env.ok.delay().get(timeout=10) == "ok"


def counted(env: Any, task: str, outcome: str) -> int:
    return len(env.server.matching(rf"celery\.{task.replace('.', '_')}\.{outcome}:1\|c"))


# -- the rows ---------------------------------------------------------------------------


def test_wrong_argument_count(env: Any, outcomes: Any, caplog: Any) -> None:
    """Refused at publish by Celery; a message that carries them anyway (send_task, an
    older publisher) is DISCARDED before the body runs, reported, with a dead letter."""
    with pytest.raises(TypeError, match="positional argument"):
        env.add.delay(1, 2, 3)
    before = counted(env, "bi.add", "discarded")
    for args, kwargs, why in [
        ((1, 2, 3), {}, "too many positional arguments"),
        ((1,), {"z": 2}, "missing a required argument: 'y'"),
    ]:
        result = env.app.send_task("bi.add", args=args, kwargs=kwargs)
        assert wait_for_outcome(result, timeout=10) == "DISCARDED"
        assert isinstance(result.info, WrongArguments)
        with pytest.raises(TypeError, match=r"do not fit bi\.add"):
            result.get(timeout=1)
        (event,) = outcomes.wait_for(result.id)
        assert event.outcome is Outcome.DISCARDED and event.report
        line = one_line(env, caplog, result.id)
        assert "outcome=discarded" in line and why in line
        assert "do not fit bi.add(x: 'int', y: 'int')" in line
        assert "a retry replays the same arguments" in line
        assert "change the task to accept them, then retry the dead letter" in line
        assert "or purge it (and fix the publisher)" in line
        letter = dead_letter(env.store, result.id)
        assert (letter.args, letter.kwargs) == (list(args), kwargs)
        assert letter.exc_type == "celery_reliable.errors.WrongArguments" and letter.retryable
    assert env.server.wait_for(r"celery\.bi_add\.discarded:1\|c", before + 2)
    worker_keeps_running(env)


def test_wrong_argument_types(env: Any, outcomes: Any, caplog: Any) -> None:
    """The arguments fit, the body fails on them: an unclassified error, FAILED."""
    result = env.add.delay("1", 2)
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    assert isinstance(result.info, TypeError)
    assert outcomes.wait_for(result.id)[0].outcome is Outcome.FAILED
    line = one_line(env, caplog, result.id, celery_failure=True)
    assert 'reason="TypeError: can only concatenate str' in line and "(unclassified)" in line
    letter = dead_letter(env.store, result.id)
    assert letter.args == ["1", 2] and letter.outcome == "failed" and letter.retryable
    worker_keeps_running(env)


def test_arguments_not_json_serializable_at_publish(env: Any, outcomes: Any) -> None:
    """Nothing is published: the caller gets kombu's EncodeError, saying which task and
    what to do instead."""
    published: list[Any] = []
    from celery.signals import after_task_publish

    def seen(sender: Any = None, headers: Any = None, **_: Any) -> None:
        published.append(headers)

    after_task_publish.connect(seen)
    try:
        with pytest.raises(EncodeError) as refused:
            env.add.delay(Point(1, 2), 3)
    finally:
        after_task_publish.disconnect(seen)
    message = str(refused.value)
    assert message.startswith("task bi.add: its arguments cannot be serialized as json")
    assert "Object of type Point is not JSON serializable" in message
    assert "nothing was published: pass plain data" in message
    assert published == []
    settle(env.app)
    assert not [e for e in outcomes.events if e.task_name == "bi.add"]
    worker_keeps_running(env)


def _publish_raw(app: Any, task: str, body: bytes, content_type: str) -> str:
    """A message with a real task's headers and a body of our choosing."""
    task_id = uuid()
    headers = {
        "lang": "py",
        "task": task,
        "id": task_id,
        "root_id": task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "test",
    }
    with app.producer_or_acquire() as producer:
        producer.publish(
            body,
            exchange="",
            routing_key=app.conf.task_default_queue,
            content_type=content_type,
            content_encoding="utf-8",
            headers=headers,
        )
    return task_id


@pytest.mark.parametrize("kind", ["pickle", "malformed json"])
def test_arguments_not_json_at_run(env: Any, outcomes: Any, caplog: Any, kind: str) -> None:
    """A body the worker refuses (pickle, not in accept_content) or cannot decode: the
    body never runs; FAILURE is stored (Celery would leave it PENDING) and the message
    is kept as a dead letter, for reading (Celery would drop it)."""
    if kind == "pickle":
        result = env.add.apply_async((Point(1, 2), 3), serializer="pickle")
        task_id, error, text = result.id, "ContentDisallowed", "application/x-python-serialize"
        fix = "or add its content type to accept_content"
    else:
        task_id = _publish_raw(env.app, "bi.add", b'[[1, 2], {}, {"chain": nul', "application/json")
        result = env.app.AsyncResult(task_id)
        error, text = "DecodeError", "b'[[1, 2], {}, {\"chain\": nul'"
        fix = "fix the publisher: the body must be what its content type says"
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    assert type(result.info).__name__ == error
    line = one_line(env, caplog, task_id)
    assert line.startswith(f"task bi.add[{task_id}]: not run: ")
    letter = dead_letter(env.store, task_id)
    assert f"kept as dead letter {letter.id}: " in line and fix in line
    assert letter.exc_type == f"kombu.exceptions.{error}" and letter.outcome == "failed"
    assert not letter.retryable and letter.args is None
    assert letter.args_repr is not None and text in letter.args_repr
    with pytest.raises(DeadLetterError, match="could not be stored as JSON"):
        env.store.dead_letters.retry(letter.id)
    assert outcomes.for_id(task_id) == [], "no execution: the body never ran"
    worker_keeps_running(env)


def test_unknown_task_name(env: Any, outcomes: Any, caplog: Any) -> None:
    """Celery stores NotRegistered and drops the message; here it is a dead letter
    first, which `dead retry` publishes again once a worker has the task."""
    result = env.app.send_task("bi.not_deployed_yet", args=(7,), kwargs={"note": "gift"})
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    assert type(result.info).__name__ == "NotRegistered"
    letter = dead_letter(env.store, result.id)
    assert (letter.task_name, letter.args, letter.kwargs) == (
        "bi.not_deployed_yet",
        [7],
        {"note": "gift"},
    )
    assert letter.exc_type == "celery.exceptions.NotRegistered" and letter.retryable
    line = one_line(env, caplog, result.id)
    assert line == (
        f"task bi.not_deployed_yet[{result.id}]: not run: no task of this name is "
        f"registered in this worker; kept as dead letter {letter.id}: import its module "
        "in the worker (include=, autodiscover_tasks) or fix the name the publisher uses, "
        f"then re-publish it: celery -A <app> reliable dead retry {letter.id}"
    )
    # Re-published as it came: same name, arguments and queue (this worker still lacks
    # the task, so it comes back as a dead letter of its own).
    again = env.store.dead_letters.retry(letter.id)
    assert wait_for_outcome(again, timeout=10) == "FAILURE"
    second = dead_letter(env.store, again.id)
    assert (second.task_name, second.args, second.kwargs, second.queue) == (
        letter.task_name,
        letter.args,
        letter.kwargs,
        letter.queue,
    )
    worker_keeps_running(env)


def test_idempotency_key_function_that_raises(env: Any, outcomes: Any, caplog: Any) -> None:
    result = env.keyed_by_function.delay(41)
    assert wait_for_outcome(result, timeout=10) == "DISCARDED"
    assert isinstance(result.info, IdempotencyKeyError)
    assert outcomes.wait_for(result.id)[0].outcome is Outcome.DISCARDED
    line = one_line(env, caplog, result.id)
    assert "callable raised LookupError: no customer in these arguments" in line
    assert "make it return a str for every argument the task accepts" in line
    letter = dead_letter(env.store, result.id)
    assert letter.args == [41] and letter.retryable
    assert calls("keyed_by_function:41") == 0, "the body never ran without its key"
    assert env.store.receipts.list(task_name="bi.keyed_by_function") == []
    worker_keeps_running(env)


def test_key_template_naming_a_missing_argument(env: Any, outcomes: Any, caplog: Any) -> None:
    """A name that is no parameter fails when the task is defined; a keyword a
    ``**kwargs`` task was not given fails at run: DISCARDED."""
    with pytest.raises(ValueError, match=r"names \['ordr'\], which are not parameters"):

        @env.app.task(
            base=ReliableTask, shared=False, name="bi.typo", timeout=5, idempotency_key="{ordr}"
        )
        def typo(order: int) -> None:
            return None

    result = env.keyed_by_kwargs.apply_async(kwargs={"customer": 5})
    assert wait_for_outcome(result, timeout=10) == "DISCARDED"
    assert isinstance(result.info, IdempotencyKeyError)
    assert outcomes.wait_for(result.id)[0].outcome is Outcome.DISCARDED
    line = one_line(env, caplog, result.id)
    assert "idempotency key 'order:{order}': KeyError: 'order'" in line
    assert "publish the arguments the template names, or change the template" in line
    letter = dead_letter(env.store, result.id)
    assert letter.kwargs == {"customer": 5} and letter.retryable
    assert calls("keyed_by_kwargs:{'customer': 5}") == 0
    worker_keeps_running(env)


def test_a_10_mb_argument(env: Any, outcomes: Any, caplog: Any) -> None:
    """It runs like any other; its dead letter keeps it whole and publishes it again;
    no log line carries it."""
    caplog.set_level(logging.INFO)
    key, blob = new_key(), "x" * TEN_MB
    result = env.big.apply_async((key, blob))
    assert wait_for_outcome(result, timeout=30) == "DISCARDED"
    one_line(env, caplog, result.id)
    letter = dead_letter(env.store, result.id)
    assert letter.args == [key, blob] and letter.retryable
    again = env.store.dead_letters.retry(letter.id)
    assert again.get(timeout=30) == TEN_MB
    assert outcomes.wait_for(again.id)[0].outcome is Outcome.SUCCEEDED
    receipt = env.store.receipts.get("bi.big", key)
    assert receipt is not None and receipt.state == "succeeded"
    assert max(len(r.getMessage()) for r in caplog.records) < 10_000
    worker_keeps_running(env)


def test_a_result_that_is_not_json_serializable(env: Any, outcomes: Any, caplog: Any) -> None:
    """The body ran, its result cannot be stored: FAILED, before anything is told, so
    the metrics, the receipt and the stored state agree (Celery alone would store a
    FAILURE after the outcome said SUCCEEDED)."""
    before = counted(env, "bi.returns_point", "failed")
    result = env.returns_point.delay()
    assert wait_for_outcome(result, timeout=10) == "FAILURE"
    assert type(result.info).__name__ == "ResultNotSerializable"
    (event,) = outcomes.wait_for(result.id)
    assert event.outcome is Outcome.FAILED and event.report
    line = one_line(env, caplog, result.id, celery_failure=True)
    assert "value of type 'Point' that the result backend cannot serialize as json" in line
    assert "return plain data (str, numbers, lists, dicts), or set ignore_result=True" in line
    letter = dead_letter(env.store, result.id)
    assert letter.exc_type == "celery_reliable.errors.ResultNotSerializable"
    assert env.server.wait_for(r"celery\.bi_returns_point\.failed:1\|c", before + 1)
    assert counted(env, "bi.returns_point", "succeeded") == 0
    # With a key, the claim is given back, not marked succeeded with no result: the
    # same key runs again (and fails again), instead of a DUPLICATE returning None.
    key = new_key()
    for run in (1, 2):
        keyed = env.returns_point_keyed.delay(key)
        assert wait_for_outcome(keyed, timeout=10) == "FAILURE"
        assert calls(key) == run
    assert env.store.receipts.get("bi.returns_point_keyed", key) is None
    worker_keeps_running(env)


@pytest.mark.parametrize(
    "header",
    [
        "garbage",
        ["not", "a", "dict"],
        {"attempts": {"f00dcafe": float("inf")}},
        {"attempts": {"f00dcafe": -1}},
        {"snoozes": "many"},
        {"history": [[1, float("nan"), "a retry"]]},
    ],
    ids=["string", "list", "infinite count", "negative count", "text count", "nan time"],
)
def test_malformed_reliable_header(env: Any, outcomes: Any, caplog: Any, header: Any) -> None:
    """The counters start afresh, said once; the retries stay bounded."""
    key = new_key()
    result = env.flaky.apply_async((key,), headers={"reliable": header})
    assert wait_for_outcome(result, timeout=15) == "FAILURE"
    events = outcomes.wait_for(result.id, count=3)
    assert [e.outcome for e in events] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.EXHAUSTED]
    assert calls(key) == 3
    warned = [
        r.getMessage()
        for r in _lines(caplog, result.id, ours=True)
        if r.name == "celery_reliable.execution"
    ]
    assert len(warned) == 1, warned
    assert "ignoring malformed 'reliable' header" in warned[0]
    assert "do not set it when publishing" in warned[0]
    assert dead_letter(env.store, result.id).attempts == 3
    worker_keeps_running(env)


# -- rows that need a worker of their own: a real `celery worker` process -------------------


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def worker_app(broker: str) -> Iterator[Any]:
    """The test's side of bad_input_app (it only publishes and reads results); the
    module reads its environment once, on import."""
    saved = {name: os.environ.get(name) for name in ("RELIABLE_TEST_BROKER", "RELIABLE_TEST_STORE")}
    os.environ.update(RELIABLE_TEST_BROKER=broker, RELIABLE_TEST_STORE="sqlite:///:memory:")
    try:
        from tests.support.apps import bad_input as bad_input_app
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield bad_input_app


def _store_at(url: str) -> Store:
    app = Celery("bad-input-reader", set_as_current=False)
    app.conf.reliable_database_url = url
    return ready_store(app)  # type: ignore[no-any-return]


def _lines_of(worker: WorkerProcess, text: str) -> list[str]:
    """The worker's log lines at WARNING or above that mention ``text``."""
    levels = ("WARNING/", "ERROR/", "CRITICAL/")
    return [line for line in worker.lines if text in line and any(x in line for x in levels)]


def only_celerys_failure_tracebacks(worker: WorkerProcess) -> bool:
    """Every traceback in a worker's log belongs to Celery's report of a FAILURE (one
    per EXHAUSTED or FAILED job, as always): none is ours."""
    record = ""
    for line in worker.lines:
        if line.startswith("[20"):  # a record: "[2026-11-24 02:13:31,293: ERROR/..."
            record = line
        elif line.startswith("Traceback") and "raised unexpected" not in record:
            return False
    return True


@pytest.mark.prefork
@pytest.mark.parametrize("result_serializer", ["json", "pickle"])
def test_exceptions_that_cannot_be_pickled(
    broker: str, tmp_path: Any, result_serializer: str
) -> None:
    """An exception whose ``__init__`` needs arguments (it pickles, but does not
    unpickle) and one holding a lock (it does not pickle) cross the prefork pool and
    reach the result backend (as Celery's UnpickleableExceptionWrapper under JSON); the
    outcome, the log line and the dead letter keep the real class and message."""
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    env = {
        "RELIABLE_TEST_BROKER": broker,
        "RELIABLE_TEST_STORE": url,
        "RELIABLE_TEST_RESULT_SERIALIZER": result_serializer,
    }
    # Published and read by an app reading results as the worker writes them (an app
    # that publishes subscribes to the results, and could not read these).
    reader = Celery("bad-input-results", broker=broker, backend=broker, set_as_current=False)
    reader.conf.update(
        result_serializer=result_serializer, result_accept_content=["json", "pickle"]
    )
    with celery_worker("tests.support.apps.bad_input", env) as worker:
        jobs = [
            (
                reader.send_task("bi.needs_arguments", (7,)),
                ["retried", "exhausted"],
                "NeedsArguments",
            ),
            (reader.send_task("bi.holds_a_lock"), ["retried", "exhausted"], "HoldsALock"),
            (reader.send_task("bi.unpicklable_unclassified"), ["failed"], "HoldsALock"),
        ]
        for result, expected, name in jobs:
            assert wait_for_outcome(result, timeout=20) == "FAILURE", worker.output
            events = recorded(broker, result.id, len(expected))
            assert [e["outcome"] for e in events] == expected, worker.output
            assert all(e["exc_type"] == name for e in events)
            # JSON: Celery's wrapper, naming the class; pickle: the class, restored.
            assert getattr(result.info, "exc_cls_name", type(result.info).__name__) == name
            wait_until(
                lambda r=result: len(_lines_of(worker, r.id)) >= 2,
                f"two log lines about {result.id}",
                timeout=15,
                seen=lambda: worker.output,
            )
        assert reader.send_task("bi.ok").get(timeout=20) == "ok", worker.output
        assert worker.proc.poll() is None, "the worker is still running"
    output = worker.output
    for broken in ("MaybeEncodingError", "Task handler raised error", "Unrecoverable error"):
        assert broken not in output, output
    assert only_celerys_failure_tracebacks(worker), output
    store = _store_at(url)
    for result, expected, name in jobs:
        letter = dead_letter(store, result.id)
        assert letter.exc_type == f"tests.support.apps.bad_input.{name}"
        assert letter.outcome == expected[-1]
        # One line of ours per execution, and for the last one Celery's FAILURE.
        lines = _lines_of(worker, result.id)
        assert [("outcome=" in line) for line in lines] == [True, False], lines
    needs = dead_letter(store, jobs[0][0].id)
    assert needs.exc_message == "order 7: card declined"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://shop@db/shop", "celery_reliable stores to SQLite or PostgreSQL, not mysql"),
        ("not a url", "is not a database URL"),
    ],
)
def test_wrong_database_url(worker_app: Any, broker: str, url: str, says: str) -> None:
    """The worker refuses to start, with one line; the messages wait in the queue."""
    waiting = worker_app.ok.delay()
    returncode, output = run_worker_to_exit(
        "tests.support.apps.bad_input",
        {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": url},
    )
    assert returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "celery_reliable" in line]
    assert len(lines) == 1, output
    assert lines[0].startswith("celery_reliable: the worker cannot start: reliable_database_url")
    assert says in lines[0]
    queued = redis.Redis.from_url(broker)
    assert queued.llen("celery") == 1, "the message was kept"
    assert waiting.state == "PENDING"
    queued.delete("celery")


@pytest.mark.prefork
def test_unreachable_database(worker_app: Any, broker: str) -> None:
    """The worker starts and says so once; a job that needs the store is retried and,
    its attempts used, EXHAUSTED with its dead letter written whole in one log line;
    jobs that do not need the store run."""
    url = f"postgresql+psycopg://reliable@127.0.0.1:{free_port()}/reliable"
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": url}
    with celery_worker("tests.support.apps.bad_input", env) as worker:
        assert worker_app.ok.delay().get(timeout=20) == "ok", worker.output
        result = worker_app.charge.delay(12)
        assert wait_for_outcome(result, timeout=30) == "FAILURE", worker.output
        events = recorded(broker, result.id, 2)
        assert [e["outcome"] for e in events] == ["retried", "exhausted"], worker.output
        assert all(e["exc_type"] == "StoreUnavailable" for e in events)
        kept = wait_until(
            lambda: [x for x in _lines_of(worker, result.id) if "dead letter for" in x],
            f"the line keeping {result.id}'s dead letter",
            timeout=10,
            seen=lambda: worker.output,
        )
        assert worker_app.ok.delay().get(timeout=20) == "ok", worker.output
    started = [line for line in worker.lines if "store not ready at start-up" in line]
    assert len(started) == 1, worker.output
    assert "ERROR/MainProcess" in started[0] and "Connection refused" in started[0]
    assert len(kept) == 1, worker.output
    assert f"dead letter for bi.charge[{result.id}] not stored" in kept[0]
    assert '"args": "[12]"' in kept[0] and '"outcome": "exhausted"' in kept[0]
    assert only_celerys_failure_tracebacks(worker), worker.output


@pytest.mark.prefork
def test_statsd_host_that_does_not_resolve(worker_app: Any, broker: str, tmp_path: Any) -> None:
    """One warning when the worker starts; no metrics; every outcome as usual."""
    env = {
        "RELIABLE_TEST_BROKER": broker,
        "RELIABLE_TEST_STORE": f"sqlite:///{tmp_path}/store.sqlite3",
        "RELIABLE_TEST_STATSD_HOST": "statsd.invalid",
    }
    with celery_worker("tests.support.apps.bad_input", env) as worker:
        results = [worker_app.ok.delay() for _ in range(4)]
        assert [r.get(timeout=20) for r in results] == ["ok"] * 4, worker.output
        failed = worker_app.unpicklable_unclassified.delay()
        assert wait_for_outcome(failed, timeout=20) == "FAILURE"
        assert [e["outcome"] for e in recorded(broker, failed.id, 1)] == ["failed"]
    warned = [line for line in worker.lines if "statsd observer off" in line]
    assert len(warned) == 1, worker.output
    assert "WARNING/MainProcess" in warned[0]
    assert "reliable_statsd_host 'statsd.invalid' does not resolve" in warned[0]
    assert "until the setting is fixed and the worker restarted" in warned[0]
    assert only_celerys_failure_tracebacks(worker), worker.output
