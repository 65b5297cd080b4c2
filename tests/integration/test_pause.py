"""A pause that holds (``celery reliable pause``), on real prefork workers, a real Redis,
and a SQLite and a PostgreSQL store.

A paused queue is not consumed: its messages stay in the broker. A paused task is not
started: a message of it that a worker receives (also one it had received before the
pause came) is held back, unacknowledged. Both hold across a warm restart of the
worker; after ``resume`` every message runs exactly once, as its first attempt. What
did not run is proven by what ran instead: a job published after it, on a queue that is
not paused, ran and finished; and the paused queue's messages are still in the broker.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable.longrun.cancel import cancel_job, requester
from celery_reliable.store import migrate, store_for
from celery_reliable.testing import reset
from tests.support.celery_apps import new_redis_db
from tests.support.cli import run_reliable
from tests.support.servers import free_port
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

APP = "tests.support.apps.pause"


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def store(module_store_url: str) -> str:
    return module_store_url


@pytest.fixture(scope="module")
def env(broker: str, store: str) -> dict[str, str]:
    return {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}


@pytest.fixture(scope="module")
def app(env: dict[str, str], store: str) -> Any:
    os.environ.update(env)
    from tests.support.apps import pause

    pause.app.conf.reliable_database_url = store
    reset(pause.app)  # the module-scoped store of the other parameter was used before
    found = store_for(pause.app)
    assert found is not None
    migrate.upgrade(found.engine)  # PostgreSQL must be at head before a worker uses it
    return pause


@pytest.fixture(scope="module")
def effects(broker: str) -> redis.Redis:
    return redis.Redis.from_url(broker)


@pytest.fixture(scope="module")
def worker(env: dict[str, str], app: Any) -> Iterator[WorkerProcess]:
    with celery_worker(APP, env, concurrency=2, queues=app.QUEUES) as w:
        yield w


def cli(
    env: dict[str, str], *args: str, app: str = APP, process: bool = False
) -> subprocess.CompletedProcess[str]:
    """In this process, or in one of its own (``process``: the entry point, once for
    ``pause`` and once for ``resume``; tests/support/cli.py)."""
    return run_reliable(app, env, *args, process=process)


def key(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def runs(effects: redis.Redis, name: str) -> int:
    return int(effects.get(f"runs:{name}") or 0)


def waiting_in(effects: redis.Redis, queue: str) -> int:
    """Messages of ``queue`` in the broker, taken by no worker."""
    return int(effects.llen(queue))


def held_on(celery: Celery) -> set[str]:
    """The task ids the running workers hold back (remote control: ``reliable_held``)."""
    replies = celery.control.broadcast("reliable_held", reply=True, timeout=1.0) or []
    return {entry["id"] for reply in replies for held in reply.values() for entry in held}


def reserved_on(celery: Celery) -> set[str]:
    answers = celery.control.inspect(timeout=1.0).reserved() or {}
    return {entry["id"] for entries in answers.values() for entry in entries or []}


def consumed(celery: Celery) -> set[str]:
    answers = celery.control.inspect(timeout=1.0).active_queues() or {}
    return {queue["name"] for queues in answers.values() for queue in queues or []}


@pytest.fixture
def lone(redis_url: str, store: str, app: Any) -> Iterator[tuple[dict[str, str], Celery]]:
    """A broker of the test's own (no module worker on it), and a client app that
    publishes to it as the helper app does (its routes)."""
    broker = new_redis_db(redis_url)
    client = Celery("pause-client", broker=broker, backend=broker, set_as_current=False)
    client.conf.update(task_default_queue=app.OPEN_QUEUE, task_routes=app.app.conf.task_routes)
    try:
        yield {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store}, client
    finally:
        client.close()


def ran_once_as_first_attempt(effects: redis.Redis, names: list[str]) -> None:
    for name in names:
        assert runs(effects, name) == 1, name
        assert effects.lrange(f"attempts:{name}", 0, -1) == [b"0"], name


@pytest.mark.one_store_in_make_test("sqlite")
def test_a_paused_queue_and_task_run_nothing_across_a_warm_restart_and_once_after_resume(
    app: Any, lone: tuple[dict[str, str], Celery]
) -> None:
    env, client = lone
    effects = redis.Redis.from_url(env["RELIABLE_TEST_BROKER"])

    def publish(task: str, name: str, **options: Any) -> Any:
        return client.send_task(task, (name,), **options)

    reason = "mail server down"
    with celery_worker(APP, env, concurrency=2, queues=app.QUEUES) as first:
        done = cli(env, "pause", app.PAUSED_QUEUE, "--reason", reason, process=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout == (
            f"paused queue {app.PAUSED_QUEUE}: no worker takes its messages from now on "
            "(those running go on to their end); they wait in the broker until it is resumed\n"
        )
        assert done.stderr == ""  # the queue is routed to: no warning
        task = cli(env, "pause", "--task", "pz.held")
        assert task.returncode == 0, task.stderr
        assert task.stdout.startswith("paused task pz.held: no worker starts it from now on")
        assert task.stdout.count("\n") == 1
        # The broadcast reached the running worker: it consumes the open queue only.
        wait_until(lambda: consumed(client) == {app.OPEN_QUEUE}, "the paused queue given up")

        on_queue = [key("queued") for _ in range(3)]
        for name in on_queue:
            publish("pz.mark", name, queue=app.PAUSED_QUEUE)
        routed = key("routed")
        publish("pz.routed", routed)  # to the paused queue by task_routes
        held = [key("held") for _ in range(2)]
        ids = {publish("pz.held", name).id for name in held}  # the open queue
        # Published last, on the open queue: the worker took and ran it after the rest.
        assert publish("pz.mark", key("probe")).get(timeout=30) is not None
        for name in [*on_queue, routed, *held]:
            assert runs(effects, name) == 0, (name, first.output)
        assert waiting_in(effects, app.PAUSED_QUEUE) == 4
        wait_until(lambda: held_on(client) == ids, "both pz.held messages held by the worker")
        listed = cli(env, "pause", "--list").stdout.splitlines()
        assert listed[0] == "kind\tname\tpaused at (UTC)\tpaused by\theld\treason"
        assert [line.split("\t")[:2] + line.split("\t")[4:] for line in listed[1:]] == [
            ["queue", app.PAUSED_QUEUE, "0", reason],
            ["task", "pz.held", "2", ""],
        ]
        assert "Holding paused task: pz.held[" in first.output
        assert f"(task pz.held paused by {requester()})" in first.output

    # Stopped (a warm shutdown): the held messages went back to their queue, as they
    # were, for the next worker.
    assert waiting_in(effects, app.OPEN_QUEUE) == 2
    with celery_worker(APP, env, concurrency=2, queues=app.QUEUES) as second:
        assert f"queue {app.PAUSED_QUEUE} is paused (queue {app.PAUSED_QUEUE} paused by" in (
            second.output
        )
        assert f": {reason}): not consumed until" in second.output
        assert "task pz.held is paused (" in second.output
        assert publish("pz.mark", key("probe")).get(timeout=30) is not None
        for name in [*on_queue, routed, *held]:
            assert runs(effects, name) == 0, (name, second.output)
        assert waiting_in(effects, app.PAUSED_QUEUE) == 4
        assert consumed(client) == {app.OPEN_QUEUE}
        wait_until(lambda: held_on(client) == ids, "the held messages held again")

        resumed = cli(env, "resume", app.PAUSED_QUEUE, process=True)
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout.startswith(
            f"resumed queue {app.PAUSED_QUEUE} (paused by {requester()} since "
        ), resumed.stdout
        assert resumed.stdout.endswith(" UTC): workers take its messages again\n")
        again = cli(env, "resume", "--task", "pz.held")
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("resumed task pz.held (paused by ")

        everything = [*on_queue, routed, *held]
        wait_until(
            lambda: all(runs(effects, name) for name in everything),
            "every message to run",
            seen=lambda: {name: runs(effects, name) for name in everything},
        )
        # Once each: a job published after them on the queue that was paused ran, and
        # none of them ran again.
        assert publish("pz.mark", key("probe"), queue=app.PAUSED_QUEUE).get(timeout=30)
        ran_once_as_first_attempt(effects, everything)
        assert held_on(client) == set()
        assert consumed(client) == {app.OPEN_QUEUE, app.PAUSED_QUEUE}
        assert "task pz.held resumed" in second.output


def test_a_message_received_before_its_task_was_paused_is_held_then_runs_once(
    app: Any, env: dict[str, str], effects: redis.Redis, worker: WorkerProcess
) -> None:
    """Both pool processes busy: the worker has received the job (prefetched) and waits
    for a free process when the pause comes. The pause is written to the store only
    (no broadcast, as for a worker that was disconnected): read within seconds. More
    messages are held than the worker prefetches, one of them with a countdown, and
    the worker still takes other work."""
    blockers = [key("block") for _ in range(2)]
    for name in blockers:
        app.block.delay(name)
    wait_until(
        lambda: all(effects.exists(f"started:{name}") for name in blockers), "both processes busy"
    )
    early = key("early")
    early_id = app.held_late.delay(early).id
    wait_until(lambda: early_id in reserved_on(app.app), "the job received by the worker")

    store = store_for(app.app)
    assert store is not None
    store.pauses.pause("task", "pz.held_late", "vendor outage", "test")
    wait_until(
        lambda: "paused now (read from the store): task pz.held_late" in worker.output,
        "the worker to read the pause",
    )
    for name in blockers:
        effects.set(f"release:{name}", 1)
    late = [key("late") for _ in range(4)]
    ids = {early_id, app.held_late.apply_async((late[0],), countdown=1).id}
    ids |= {app.held_late.delay(name).id for name in late[1:-1]}
    dropped = app.held_late.delay(late[-1])
    ids.add(dropped.id)
    # Five held, more than the four messages the worker prefetches: it still takes
    # this one, published last, and runs it.
    wait_until(lambda: held_on(app.app) == ids, "every message held by the worker")
    assert app.mark.delay(key("probe")).get(timeout=30) is not None
    for name in [early, *late]:
        assert runs(effects, name) == 0, (name, worker.output)
    assert f"Holding paused task: pz.held_late[{early_id}] (task pz.held_late paused by test: " in (
        worker.output
    )

    # A held job cancelled meanwhile ends CANCELLED at once, as it would when started.
    cancel_job(app.app, dropped.id, "not needed")
    assert dropped.get(timeout=30)["outcome"] == "cancelled", worker.output
    dropped_name = late.pop()

    assert store.pauses.resume("task", "pz.held_late") is not None  # no broadcast either
    wait_until(
        lambda: all(runs(effects, name) for name in [early, *late]), "all to run once resumed"
    )
    assert app.mark.delay(key("probe")).get(timeout=30) is not None
    ran_once_as_first_attempt(effects, [early, *late])
    assert runs(effects, dropped_name) == 0
    assert held_on(app.app) == set()


def test_pause_and_resume_say_what_they_did_and_list_what_is_paused(
    app: Any, env: dict[str, str], worker: WorkerProcess
) -> None:
    assert cli(env, "pause", "--list").stdout == "nothing is paused\n"
    first = cli(env, "pause", "--task", "pz.mark", "--reason", "deploy")
    assert first.returncode == 0, first.stderr
    again = cli(env, "pause", "--task", "pz.mark", "--reason", "another")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"task pz.mark was already paused by {requester()} since ")
    assert again.stdout.endswith(" UTC: deploy; that pause stands\n")
    # A queue no task is routed to: paused (a queue can be named when publishing), and
    # a warning says so.
    odd = cli(env, "pause", "pz.opne")
    assert odd.returncode == 0, odd.stderr
    assert odd.stderr.startswith(
        "warning: no task of the app is routed to queue 'pz.opne' and no such queue is "
        "declared (did you mean 'pz.open'?)"
    ), odd.stderr
    listed = cli(env, "pause", "--list").stdout.splitlines()
    assert [line.split("\t")[:2] for line in listed[1:]] == [
        ["queue", "pz.opne"],
        ["task", "pz.mark"],
    ]
    assert listed[2].endswith(f"\t{requester()}\t0\tdeploy")
    # `check` mentions them, one line each, without failing for them.
    check = cli(env, "check", "--task", "pz.mark")
    assert "(queue pz.opne)\t-\tpaused\tqueue paused by " in check.stdout, check.stdout
    assert "pz.mark\t-\tpaused\ttask paused by " in check.stdout
    assert check.stdout.rstrip().endswith("(paused, not a gate: queue pz.opne, task pz.mark)"), (
        check.stdout
    )

    for args in (("pz.opne",), ("--task", "pz.mark")):
        done = cli(env, "resume", *args)
        assert done.returncode == 0 and done.stdout.startswith("resumed "), done
    nothing = cli(env, "resume", "--task", "pz.mark")
    assert nothing.returncode == 0
    assert nothing.stdout == "task pz.mark is not paused: nothing to resume\n"
    assert cli(env, "pause", "--list", "--json").stdout.strip() == "[]"
    # The mark still runs: nothing stayed paused.
    assert app.mark.delay(key("after")).get(timeout=30) is not None


def test_pause_errors_are_one_line(
    app: Any, env: dict[str, str], store: str, tmp_path: Path
) -> None:
    unknown = cli(env, "pause", "--task", "pz.hled")
    assert unknown.returncode == 1
    assert unknown.stderr == (
        "Error: no task named 'pz.hled'; did you mean 'pz.held'? (the app's ReliableTasks: "
        "pz.block, pz.held, pz.held_late, pz.mark, pz.routed)\n"
    )
    plain = cli(env, "pause", "--task", "pz.plain")
    assert plain.returncode == 1
    assert plain.stderr.startswith("Error: task 'pz.plain' is not a ReliableTask")
    assert cli(env, "resume", "--task", "pz.hled").stderr.startswith(
        "Error: no task named 'pz.hled'"
    )
    for args in ((), (app.PAUSED_QUEUE, "--task", "pz.held")):
        usage = cli(env, "pause", *args)
        assert usage.returncode == 2 and "name a queue" in usage.stderr, usage.stderr
    store_ = store_for(app.app)
    assert store_ is not None and store_.pauses.all() == []  # nothing was written

    if store.startswith("postgresql"):
        down = f"postgresql+psycopg://reliable@127.0.0.1:{free_port()}/reliable"
    else:
        down = f"sqlite:///{tmp_path}/missing/store.sqlite3"
    for args in (("pause", app.PAUSED_QUEUE), ("resume", "--task", "pz.held"), ("pause", "--list")):
        failed = cli({**env, "RELIABLE_TEST_STORE": down}, *args)
        assert failed.returncode == 1, failed.stdout
        assert failed.stderr.startswith("Error: the store is unavailable: "), failed.stderr
        assert failed.stderr.count("\n") == 1 and failed.stdout == ""
    none = cli(env, "pause", app.PAUSED_QUEUE, app=f"{APP}:no_store_app")
    assert none.returncode == 1
    assert none.stderr == "Error: reliable_database_url is None: there is no store\n"
    # A broker that is down is not an error: the pause is in the store, where the
    # workers read it.
    no_broker = {**env, "RELIABLE_TEST_BROKER": f"redis://127.0.0.1:{free_port()}/0"}
    done = cli(no_broker, "pause", "pz.somewhere")
    assert done.returncode == 0, done.stderr
    assert "; running workers were not told at once (broker: " in done.stdout
    assert cli(no_broker, "resume", "pz.somewhere").returncode == 0
