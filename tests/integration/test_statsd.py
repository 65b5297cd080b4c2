"""StatsD on the wire: a real UDP socket receives what a real worker sends, for every
outcome, in dotted and DogStatsD-tagged form; queue depth from the real Redis broker."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from celery_reliable import Outcome, ReliableTask
from tests.helpers import every_outcome_tasks, new_key
from tests.support.statsd import NUMBER, StatsdServer, running_statsd_server
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def statsd_server() -> Iterator[StatsdServer]:
    with running_statsd_server() as server:
        yield server


def define(app: Any) -> SimpleNamespace:
    tasks = every_outcome_tasks(app, "m", wait=0.05)

    @app.task(base=ReliableTask, shared=False, name="m.packets")
    def packets() -> str:
        return "only the packet test runs me"

    tasks.packets = packets
    return tasks


@pytest.fixture(scope="module")
def env(make_app: Any, statsd_server: StatsdServer) -> Iterator[Any]:
    app = make_app(
        "statsd",
        reliable_statsd_host="127.0.0.1",
        reliable_statsd_port=statsd_server.port,
        reliable_queue_depth_interval=0.2,
    )
    tasks = define(app)
    with embedded_worker(app):
        yield SimpleNamespace(app=app, server=statsd_server, **vars(tasks))


def _run(env: Any, outcomes: Any, task: str, args: tuple[Any, ...], count: int) -> Any:
    args = tuple(new_key() if a == "KEY" else a for a in args)
    result = getattr(env, task).apply_async(args)
    outcomes.wait_for(result.id, count=count)
    return result


@pytest.mark.parametrize(
    ("task", "args", "events"),
    [
        ("ok", (), ["succeeded"]),
        ("flaky", ("KEY",), ["retried", "succeeded"]),
        ("exhausts", (), ["retried", "exhausted"]),
        ("explicit", ("cancel", "KEY"), ["cancelled"]),
        ("explicit", ("discard", "KEY"), ["discarded"]),
        ("explicit", ("snooze", "KEY"), ["snoozed", "succeeded"]),
        ("explicit", ("fail", "KEY"), ["failed"]),
    ],
)
def test_outcome_counters_and_timers(
    env: Any, outcomes: Any, task: str, args: tuple[Any, ...], events: list[str]
) -> None:
    server = env.server
    name = f"celery.m_{task}"
    before = {e: len(server.matching(rf"{name}\.{e}:1\|c")) for e in {*events, "started"}}
    durations = len(server.matching(rf"{name}\.duration:{NUMBER}\|ms"))
    queue_times = len(server.matching(rf"{name}\.queue_time:{NUMBER}\|ms"))
    _run(env, outcomes, task, args, len(events))
    for event in set(events):
        want = before[event] + events.count(event)
        got = server.wait_for(rf"{name}\.{event}:1\|c", want)
        assert len(got) == want, (event, server.lines[-20:])
    runs = len(events)
    assert len(server.wait_for(rf"{name}\.started:1\|c", before["started"] + runs)) == (
        before["started"] + runs
    )
    assert len(server.wait_for(rf"{name}\.duration:{NUMBER}\|ms", durations + runs)) == (
        durations + runs
    )
    assert len(server.wait_for(rf"{name}\.queue_time:{NUMBER}\|ms", queue_times + runs)) == (
        queue_times + runs
    )


def test_duplicate_counter(env: Any, outcomes: Any) -> None:
    order = new_key()
    first = env.charge.apply_async((order,))
    outcomes.wait_for(first.id)
    second = env.charge.apply_async((order,))
    assert outcomes.wait_for(second.id)[0].outcome is Outcome.DUPLICATE
    assert env.server.wait_for(r"celery\.m_charge\.duplicate:1\|c")


def test_queue_time_counts_from_the_due_time_not_the_publish(env: Any, outcomes: Any) -> None:
    seen = len(env.server.matching(rf"celery\.m_ok\.queue_time:{NUMBER}\|ms"))
    result = env.ok.apply_async(countdown=1.0)
    outcomes.wait_for(result.id)
    (line,) = env.server.wait_for(rf"celery\.m_ok\.queue_time:{NUMBER}\|ms", seen + 1)[seen:]
    waited_ms = float(line.split(":")[1].split("|")[0])
    assert waited_ms < 900, f"{waited_ms} ms: measured from publish, not from the ETA"


def test_start_and_end_each_go_out_as_one_packet(env: Any, outcomes: Any) -> None:
    result = env.packets.apply_async()
    outcomes.wait_for(result.id)
    env.server.wait_for(rf"celery\.m_packets\.duration:{NUMBER}\|ms")
    started, ended = env.server.packets_with("celery.m_packets.")
    assert [line.split(":")[0] for line in started] == [
        "celery.m_packets.started",
        "celery.m_packets.queue_time",
    ]
    assert [line.split(":")[0] for line in ended] == [
        "celery.m_packets.succeeded",
        "celery.m_packets.duration",
    ]


def test_worker_samples_the_depth_of_its_queues(env: Any) -> None:
    assert env.server.wait_for(r"celery\.queue\.celery\.depth:0\|g")


def test_depth_counts_waiting_messages_and_priority_sub_queues(env: Any) -> None:
    from celery_reliable.worker.sampler import QueueDepthSampler

    for priority in (None, 0, 5, 9):
        env.ok.apply_async(queue="parked", priority=priority)
    sampler = QueueDepthSampler(env.app, ["parked", "never-used"], 1.0, lambda d: None)
    assert sampler.sample() == [("parked", 4), ("never-used", 0)]


def test_depth_on_rabbitmq_counts_the_messages_waiting(rabbitmq_url: str, redis_url: str) -> None:
    """AMQP answers a passive declare with the queue's message count; a queue never
    declared is a 404 that closes the channel, and counts as empty."""
    from celery_reliable.worker.sampler import QueueDepthSampler
    from tests.support.celery_apps import new_amqp_app

    app = new_amqp_app(rabbitmq_url, redis_url, "depth-amqp")
    parked = f"parked-{new_key()}"

    @app.task(base=ReliableTask, shared=False, name="m.amqp_ok")
    def ok() -> str:
        return "ok"

    for _ in range(3):
        ok.apply_async(queue=parked)
    sampler = QueueDepthSampler(app, [parked, "never-declared"], 1.0, lambda d: None)
    assert sampler.sample() == [(parked, 3), ("never-declared", 0)]
    ok.apply_async(queue=parked)
    assert sampler.sample() == [(parked, 4), ("never-declared", 0)]
