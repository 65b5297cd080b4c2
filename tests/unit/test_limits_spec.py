"""limits=[...] are checked when the task class is built: each mistake is one clear
error at import, before any worker runs."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable import ReliableTask
from celery_reliable.config import settings_for
from celery_reliable.headers import Counters
from celery_reliable.limits import concurrency, rate
from celery_reliable.limits.slots import limits_url

pytestmark = pytest.mark.usefixtures("no_shared_tasks")


def make_app(broker: str = "redis://127.0.0.1:1/0", **conf: Any) -> Celery:
    app = Celery("limits-spec", broker=broker, set_as_current=False)
    app.conf.reliable_database_url = None
    app.conf.update(conf)
    return app


def define(app: Celery, limits: Any, **options: Any) -> Any:
    @app.task(base=ReliableTask, name="t.sync", shared=False, limits=limits, **options)
    def sync(org: str, repo: str = "main") -> str:
        return f"{org}/{repo}"

    del sync  # the app builds the class when it is finalized, as a worker's import does
    return app.tasks["t.sync"]


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda: concurrency(0), "concurrency: n must be a whole number >= 1, got 0"),
        (lambda: concurrency(True), "concurrency: n must be a whole number >= 1, got True"),
        (lambda: concurrency(2.5), "concurrency: n must be a whole number >= 1, got 2.5"),
        (lambda: rate(5, per=0), "rate: per must be a number of seconds > 0, got 0"),
        (lambda: rate(5, per=float("inf")), "rate: per must be a number of seconds > 0, got inf"),
        (lambda: concurrency(2, key=""), "concurrency: key must be a non-empty format string"),
    ],
)
def test_a_bad_limit_is_an_error_where_it_is_written(build: Any, says: str) -> None:
    with pytest.raises(ValueError, match="^" + says.replace("(", r"\(").replace(")", r"\)")):
        build()


@pytest.mark.parametrize(
    ("limits", "error", "says"),
    [
        (
            [concurrency(2, key="org:{owner}")],
            ValueError,
            "task t.sync: concurrency(2, key='org:{owner}'): the key names ['owner'], which "
            "are not parameters of the task (org, repo)",
        ),
        (
            [concurrency(2, key="org:{0}")],
            ValueError,
            "task t.sync: concurrency(2, key='org:{0}'): use parameter names in the key",
        ),
        (
            [rate(2, per=1, key="gh"), rate(5, per=60, key="gh")],
            ValueError,
            "task t.sync: two rate limits with the key 'gh': keep one",
        ),
        ([5], TypeError, "task t.sync: limits takes concurrency(...) and rate(...)"),
        ("erp", TypeError, "task t.sync: limits must be a list of concurrency(...) / rate(...)"),
    ],
)
def test_a_task_with_a_wrong_limit_fails_at_import(limits: Any, error: Any, says: str) -> None:
    with pytest.raises(error) as raised:
        define(make_app(), limits, timeout=10)
    assert str(raised.value).startswith(says), raised.value


def test_a_concurrency_limit_needs_a_time_limit_for_its_lease() -> None:
    with pytest.raises(ImproperlyConfigured, match="a concurrency limit needs timeout="):
        define(make_app(), [concurrency(2)])
    # A rate holds nothing: no lease needed.
    task = define(make_app(), [rate(2, per=1)])
    assert task._reliable_slots.shapes == (("r", 2, 1000),)


def test_keys_render_from_the_arguments_and_default_to_the_task_name() -> None:
    task = define(make_app(), [concurrency(2), rate(3, per=2, key="gh:{org}")], timeout=10)
    parts = task._reliable_slots.parts(("acme",), {"repo": "api"})
    assert [(p.kind, p.key, p.n, p.span_ms) for p in parts] == [
        ("c", "concurrency:t.sync", 2, 15_000 + 5_000),  # hard limit 15 s + 5 s margin
        ("r", "rate:gh:acme", 3, 2000),
    ]


def test_limits_need_redis_or_the_store() -> None:
    assert limits_url(make_app()) == "redis://127.0.0.1:1/0"
    assert limits_url(make_app("amqp://guest@localhost//", reliable_limits_url="store")) == "store"
    with pytest.raises(ImproperlyConfigured, match=r"the broker \(amqp\) is not Redis, so set "):
        limits_url(make_app("amqp://guest@localhost//"))
    with pytest.raises(ImproperlyConfigured, match="reliable_limits_url must be a Redis URL"):
        settings_for(make_app(reliable_limits_url="postgresql://db/x"))


def test_waits_are_carried_in_the_headers_apart_from_snoozes() -> None:
    counters = Counters().with_snooze().with_limited(1_700_000_000_000).with_limited(1)
    header = counters.as_header()
    assert header["snoozes"] == 1 and header["limited"] == 2 and header["since"] == 1
    again = Counters.from_headers({"reliable": header}, "id")
    assert (again.snoozes, again.limited, again.since) == (1, 2, 1)
    assert "limited" not in Counters().as_header()
