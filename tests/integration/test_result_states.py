"""Our terminal states are terminal to a caller's ``AsyncResult`` (celery_reliable.results),
on each result backend the docs name: Redis (pub/sub waits), Celery's database backend
(polling; SQLite here) and rpc (replies over the broker). Real Redis broker, real
worker, real backends.

Before, ``get()`` of a CANCELLED or DISCARDED job waited until its timeout (Celery's
integration suite, ``test_wrong_arguments``, found it), and a group or a chord waiting
on one never ended.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import chord, group
from celery.exceptions import ChordError

from celery_reliable import Cancel, Discard, ReliableTask, discard_on
from celery_reliable.errors import WrongArguments
from celery_reliable.results import wait_for_outcome
from tests.helpers import app_with_worker, tasks_in

pytestmark = pytest.mark.integration


class OrderNotFound(Exception):
    pass


def define(app: Any) -> SimpleNamespace:
    @app.task(shared=False, base=ReliableTask, name="r.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, base=ReliableTask, name="r.loose", typing=False)
    def loose(x: int, y: int) -> int:
        return x + y

    @app.task(shared=False, base=ReliableTask, name="r.cancel")
    def cancel(reason: str) -> Any:
        return Cancel(reason)

    @app.task(shared=False, base=ReliableTask, name="r.discard")
    def discard(reason: str) -> Any:
        raise Discard(reason)

    @app.task(shared=False, base=ReliableTask, name="r.missing")
    @discard_on(OrderNotFound)
    def missing(order: int) -> Any:
        raise OrderNotFound(f"order {order}")

    @app.task(shared=False, base=ReliableTask, name="r.collect")
    def collect(values: list[Any]) -> list[Any]:
        return values

    return tasks_in(locals())


BACKENDS = ["redis", "database", "rpc"]


@pytest.fixture(scope="module", params=BACKENDS)
def env(request: Any, make_app: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    app = make_app(f"states-{request.param}")
    if request.param == "database":
        path: Path = tmp_path_factory.mktemp("results") / "results.sqlite3"
        app.conf.result_backend = f"db+sqlite:///{path}"
    elif request.param == "rpc":
        app.conf.result_backend = "rpc://"
    with app_with_worker(app, define(app)) as env:
        env.backend = request.param
        yield env


def test_cancelled_is_ready_and_get_returns_the_outcome(env: Any) -> None:
    result = env.cancel.delay("nothing to do")
    value = result.get(timeout=10)
    assert value["outcome"] == "cancelled"
    assert value["reason"] == "nothing to do"
    assert result.state == "CANCELLED"
    assert result.ready()
    assert not result.successful()
    assert not result.failed()


def test_discarded_get_raises_the_discard(env: Any) -> None:
    result = env.discard.delay("payload is garbage")
    with pytest.raises(Discard, match="payload is garbage"):
        result.get(timeout=10)
    assert result.state == "DISCARDED"
    assert result.ready()
    assert not result.successful()
    assert not result.failed(), "failed() is Celery's: FAILURE only"
    assert isinstance(result.info, Discard)
    assert result.get(timeout=1, propagate=False).reason == "payload is garbage"


def test_discarded_get_raises_the_matched_exception(env: Any) -> None:
    result = env.missing.delay(42)
    with pytest.raises(OrderNotFound, match="order 42"):
        result.get(timeout=10)


def test_wrong_arguments_raise_a_type_error(env: Any) -> None:
    """Celery's own test_wrong_arguments, for a task with typing=False."""
    result = env.loose.delay(5)
    with pytest.raises(TypeError) as raised:
        result.get(timeout=10)
    assert isinstance(raised.value, WrongArguments)
    assert "r.loose" in str(raised.value)
    assert result.state == "DISCARDED"


def test_a_finished_job_read_later_answers_at_once(env: Any) -> None:
    """A second AsyncResult for a job that ended before anyone waited on it."""
    cancelled = env.cancel.delay("later")
    discarded = env.discard.delay("later")
    assert cancelled.get(timeout=10)["reason"] == "later"
    with pytest.raises(Discard):
        discarded.get(timeout=10)
    if env.backend == "rpc":
        return  # rpc: a result is a message to its caller, read once
    assert env.app.AsyncResult(cancelled.id).get(timeout=1)["reason"] == "later"
    with pytest.raises(Discard):
        env.app.AsyncResult(discarded.id).get(timeout=1)


def test_a_group_with_a_cancelled_member_joins(env: Any) -> None:
    result = group(env.add.s(1, 2), env.cancel.s("skip"), env.add.s(3, 4)).apply_async()
    values = result.get(timeout=15)
    assert values[0] == 3 and values[2] == 7
    assert values[1]["outcome"] == "cancelled"


def test_a_group_with_a_discarded_member_raises_its_exception(env: Any) -> None:
    result = group(env.add.s(1, 2), env.discard.s("bad row")).apply_async()
    with pytest.raises(Discard, match="bad row"):
        result.get(timeout=15)
    assert result.ready()


# Celery's rpc backend has no chords.
@pytest.mark.parametrize("env", ["redis", "database"], indirect=True)
def test_a_chord_with_a_discarded_part_fails_like_a_failed_part(env: Any) -> None:
    result = chord([env.add.s(1, 2), env.discard.s("bad row")])(env.collect.s())
    # As for a FAILURE part: get() raises the part's exception (it follows the
    # parents), and the body never runs: it is marked FAILURE with a ChordError.
    with pytest.raises(Discard, match="bad row"):
        result.get(timeout=20)
    assert wait_for_outcome(result, timeout=20) == "FAILURE"
    assert isinstance(result.info, ChordError)
    assert "bad row" in str(result.info)
