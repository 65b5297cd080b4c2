"""StatsD in DogStatsD-tagged form, and StatsD that is down or does not resolve: the
tasks reach the same outcomes. (Each test runs its own worker.)"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from celery_reliable import Discard, Outcome, ReliableTask
from celery_reliable.results import wait_for_outcome
from tests.support.servers import free_port
from tests.support.statsd import NUMBER, running_statsd_server
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration


def _tasks(app: Any) -> tuple[Any, Any]:
    @app.task(base=ReliableTask, shared=False, name="modes.ok")
    def ok() -> str:
        return "ok"

    @app.task(base=ReliableTask, shared=False, name="modes.bad")
    def bad() -> None:
        raise Discard("bad input")

    return ok, bad


def test_dogstatsd_tagged_names(make_app: Any, outcomes: Any) -> None:
    with running_statsd_server() as server:
        app = make_app(
            "tagged",
            reliable_statsd_host="127.0.0.1",
            reliable_statsd_port=server.port,
            reliable_statsd_tags="dogstatsd",
            reliable_statsd_prefix="jobs",
            reliable_queue_depth_interval=0.2,
        )
        ok, bad = _tasks(app)
        with embedded_worker(app):
            for task in (ok, bad):
                outcomes.wait_for(task.apply_async().id)
            tags = r"\|#task:modes\.ok,queue:celery"
            assert server.wait_for(rf"jobs\.task\.started:1\|c{tags}")
            assert server.wait_for(rf"jobs\.task\.queue_time:{NUMBER}\|ms{tags}")
            assert server.wait_for(rf"jobs\.task\.succeeded:1\|c{tags},outcome:succeeded")
            assert server.wait_for(rf"jobs\.task\.duration:{NUMBER}\|ms{tags},outcome:succeeded")
            assert server.wait_for(
                r"jobs\.task\.discarded:1\|c\|#task:modes\.bad,queue:celery,outcome:discarded"
            )
            assert server.wait_for(r"jobs\.queue\.depth:0\|g\|#queue:celery")
        assert not server.matching(r"jobs\.modes_ok\..*"), "no dotted names in tagged mode"


@pytest.mark.parametrize("host", ["127.0.0.1", "statsd.invalid"])
def test_statsd_down_or_unresolvable_changes_no_outcome(
    make_app: Any, outcomes: Any, caplog: Any, host: str
) -> None:
    """Nothing listens on the port (the kernel answers ICMP port unreachable), or the
    host name does not resolve (the observer is off, with a warning)."""
    app = make_app("statsd-down", reliable_statsd_host=host, reliable_statsd_port=free_port())
    ok, bad = _tasks(app)
    caplog.set_level(logging.WARNING, logger="celery_reliable.wiring")
    with embedded_worker(app):
        results = [ok.apply_async() for _ in range(3)] + [bad.apply_async()]
        states = [wait_for_outcome(r, timeout=10) for r in results]
        events = [outcomes.wait_for(r.id)[0].outcome for r in results]
    assert states == ["SUCCESS"] * 3 + ["DISCARDED"]
    assert events == [Outcome.SUCCEEDED] * 3 + [Outcome.DISCARDED]
    if host == "statsd.invalid":
        assert any("statsd observer off" in r.getMessage() for r in caplog.records)
