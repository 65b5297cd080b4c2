"""Sentry only for errors that matter: the real sentry-sdk sends over real HTTP to a
loopback endpoint. Exactly one event per reported outcome and none for the others,
with sentry-sdk's CeleryIntegration on (its default) and off, in a real prefork
worker that initialises Sentry as users do. A DSN nobody answers changes no outcome.

(sentry-sdk installs integrations once per process, so each mode gets its own worker
process.)"""

from __future__ import annotations

import contextlib
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sentry_sdk
from celery import Celery

from tests.helpers import new_key
from tests.support.apps.sentry_tasks import define
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.sentry import FLUSHED, SentryServer, running_sentry_server, sentry_off
from tests.support.statsd import NUMBER, StatsdServer, running_statsd_server
from tests.support.waiting import wait_until
from tests.support.workers import celery_worker, embedded_worker

pytestmark = pytest.mark.integration

#: The Sentry events each task must produce: (outcome tag, level).
EXPECTED_EVENTS: dict[str, list[tuple[str, str]]] = {
    "ok": [],
    "retries_quietly": [("exhausted", "error")],
    "retries_loudly": [("retried", "warning"), ("exhausted", "error")],
    "fails": [("failed", "error")],
    "discards_quietly": [],
    "discards_loudly": [("discarded", "warning")],
    "cancels": [],
    "snoozes": [],
    "charges": [],  # succeeded once, then a duplicate
}

#: The outcomes each task's executions reach.
EXPECTED_OUTCOMES = {
    "ok": ["succeeded"],
    "retries_quietly": ["retried", "exhausted"],
    "retries_loudly": ["retried", "exhausted"],
    "fails": ["failed"],
    "discards_quietly": ["discarded"],
    "discards_loudly": ["discarded"],
    "cancels": ["cancelled"],
    "snoozes": ["snoozed", "succeeded"],
    "charges": ["succeeded", "duplicate"],
}


@pytest.fixture
def sentry_server() -> Iterator[SentryServer]:
    with running_sentry_server() as server:
        yield server


@pytest.fixture
def statsd() -> Iterator[StatsdServer]:
    with running_statsd_server() as server:
        yield server


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as it is held: bound, never
    listening, and without SO_REUSEADDR, so no server (of this process or another) can
    take it meanwhile, as it could a port ``free_port()`` found free and let go of."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("mode", ["on", "on-without-dedupe", "off"])
def test_one_event_per_reported_outcome_and_none_for_the_rest(
    redis_url: str, sentry_server: SentryServer, tmp_path: Any, mode: str, statsd: StatsdServer
) -> None:
    """And StatsD beside it: sentry-sdk's CeleryIntegration nests custom headers
    (celery#4875), which must not lose the publish time queue_time is measured from."""
    broker = new_redis_db(redis_url)
    env = {
        "RELIABLE_TEST_BROKER": broker,
        "RELIABLE_TEST_STORE": f"sqlite:///{tmp_path}/store.sqlite3",
        "TEST_SENTRY_DSN": sentry_server.dsn,
        "TEST_SENTRY_CELERY": mode,
        "RELIABLE_TEST_STATSD_PORT": str(statsd.port),
    }
    client = Celery("sentry-client", broker=broker, backend=broker, set_as_current=False)
    with celery_worker("tests.support.apps.sentry", env, concurrency=2) as worker:
        ids = {}
        for name in EXPECTED_OUTCOMES:
            if name == "charges":
                continue
            args: tuple[Any, ...] = (new_key(),) if name == "snoozes" else ()
            ids[name] = client.send_task(f"sentry.{name}", args).id
        order = new_key()
        first_charge = client.send_task("sentry.charges", (order,))
        seen = {
            name: [e["outcome"] for e in recorded(broker, task_id, len(EXPECTED_OUTCOMES[name]))]
            for name, task_id in ids.items()
        }
        seen["charges"] = [e["outcome"] for e in recorded(broker, first_charge.id, 1)]
        second_charge = client.send_task("sentry.charges", (order,))
        seen["charges"] += [e["outcome"] for e in recorded(broker, second_charge.id, 1)]
        assert seen == EXPECTED_OUTCOMES, (seen, worker.output[-3000:])
        expected_total = sum(len(v) for v in EXPECTED_EVENTS.values())
        wait_until(
            lambda: len(sentry_server.all_events()) >= expected_total,
            f"{expected_total} Sentry events",
            seen=sentry_server.all_events,
        )
    # And nothing more arrives: every process that ran a job, and the main process,
    # flushed its Sentry client on its way out (the worker has stopped).
    flushed = {int(pid) for pid in redis.Redis.from_url(broker).lrange(FLUSHED, 0, -1)}
    ran = {
        e["pid"]
        for task_id in [*ids.values(), first_charge.id, second_charge.id]
        for e in recorded(broker, task_id, 1)
    }
    assert ran | {worker.proc.pid} <= flushed, (ran, worker.proc.pid, flushed, worker.output)
    events = sentry_server.all_events()

    for name, runs in EXPECTED_OUTCOMES.items():
        found = statsd.wait_for(rf"celery\.sentry_{name}\.queue_time:{NUMBER}\|ms", len(runs))
        assert len(found) == len(runs), (name, statsd.lines)

    got: dict[str, list[tuple[str, str]]] = {name: [] for name in EXPECTED_EVENTS}
    for event in events:
        tags = event.get("tags") or {}
        assert "outcome" in tags, f"an event that is not ours (a duplicate): {event}"
        got[tags["task"].removeprefix("sentry.")].append((tags["outcome"], event["level"]))
    assert {k: Counter(v) for k, v in got.items()} == {
        k: Counter(v) for k, v in EXPECTED_EVENTS.items()
    }


def test_event_tags_fingerprint_and_retry_breadcrumbs(
    make_app: Any, outcomes: Any, sentry_server: SentryServer
) -> None:
    sentry_sdk.init(dsn=sentry_server.dsn, auto_enabling_integrations=False)
    try:
        app = make_app("sentry_tags")
        tasks = define(app, "sentry_tags")
        with embedded_worker(app, concurrency=1):
            result = tasks["retries_loudly"].apply_async()
            outcomes.wait_for(result.id, count=2)
        sentry_sdk.flush(timeout=10)
    finally:
        sentry_sdk.get_client().close()
        sentry_off()
    events = sentry_server.all_events()
    assert len(events) == 2
    retried, exhausted = sorted(events, key=lambda e: e["level"] != "warning")
    assert exhausted["level"] == "error"
    assert exhausted["tags"] == {
        "task": "sentry_tags.retries_loudly",
        "outcome": "exhausted",
        "attempt": "2",
        "queue": "celery",
    }
    assert exhausted["fingerprint"] == [
        "sentry_tags.retries_loudly",
        "tests.support.apps.sentry_tasks.Flaky",
    ]
    assert exhausted["exception"]["values"][-1]["type"] == "Flaky"
    assert exhausted["extra"]["task_id"] == result.id
    assert "attempts exhausted: 2/2" in exhausted["extra"]["reason"]
    assert retried["tags"]["outcome"] == "retried" and retried["level"] == "warning"
    crumbs = [
        c
        for c in exhausted.get("breadcrumbs", {}).get("values", [])
        if c.get("category") == "celery_reliable"
    ]
    assert crumbs and "retried" in crumbs[-1]["message"], (
        retried.get("breadcrumbs"),
        exhausted.get("breadcrumbs"),
    )


def test_unreachable_dsn_changes_no_outcome(make_app: Any, outcomes: Any) -> None:
    with refused_port() as port:
        # No auto-enabled integrations: CeleryIntegration, once installed, stays installed
        # for the whole test process (the worker-process tests above cover it).
        sentry_sdk.init(dsn=f"http://public@127.0.0.1:{port}/1", auto_enabling_integrations=False)
        try:
            app = make_app("sentry_down")
            tasks = define(app, "sentry_down")
            with embedded_worker(app):
                results = {
                    name: task.apply_async((new_key(),) if name in ("snoozes", "charges") else ())
                    for name, task in tasks.items()
                }
                # In the order of each job's executions (the recorder's), not of arrival.
                seen = {
                    name: [
                        e.outcome.value
                        for e in outcomes.wait_for(
                            r.id, count=len(EXPECTED_OUTCOMES[name]) if name != "charges" else 1
                        )
                    ]
                    for name, r in results.items()
                }
        finally:
            sentry_sdk.get_client().close(timeout=0)
            sentry_off()
    assert seen == {**EXPECTED_OUTCOMES, "charges": ["succeeded"]}
