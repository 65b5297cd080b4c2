"""Global limits on real prefork workers: two ``celery worker`` processes with three
pool processes each, a real Redis, and the limits kept in Redis, or in the SQL store
(SQLite, PostgreSQL). What runs at once is counted outside the product, in Redis
(``tests/support/apps/limits.py``)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable.store import migrate, store_for
from celery_reliable.testing import reset
from tests.conftest import fresh_store_url
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

APP = "tests.support.apps.limits"


@pytest.fixture(scope="module", params=["redis", "sqlite", "postgresql"])
def where(request: pytest.FixtureRequest) -> str:
    """Where the limits live: the broker's Redis, or the store on SQLite / PostgreSQL."""
    return str(request.param)


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    """One broker for the module's three runs: the test process's app keeps the result
    backend it first built (each run's keys are its own)."""
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def env(where: str, broker: str, request: pytest.FixtureRequest) -> dict[str, str]:
    store = fresh_store_url("sqlite" if where == "redis" else where, request)
    return {
        "RELIABLE_TEST_BROKER": broker,
        "RELIABLE_TEST_STORE": store,
        "RELIABLE_TEST_LIMITS": "" if where == "redis" else "store",
    }


@pytest.fixture(scope="module")
def app(env: dict[str, str]) -> Any:
    os.environ.update(env)
    from tests.support.apps import limits

    limits.app.conf.broker_url = env["RELIABLE_TEST_BROKER"]
    limits.app.conf.result_backend = env["RELIABLE_TEST_BROKER"]
    limits.app.conf.reliable_database_url = env["RELIABLE_TEST_STORE"]
    limits.app.conf.reliable_limits_url = env["RELIABLE_TEST_LIMITS"] or None
    reset(limits.app)
    store = store_for(limits.app)
    assert store is not None
    migrate.upgrade(store.engine)  # PostgreSQL must be at head before a worker uses it
    limits.effects = redis.Redis.from_url(env["RELIABLE_TEST_BROKER"])
    return limits


@pytest.fixture(scope="module")
def workers(env: dict[str, str], app: Any) -> Iterator[list[WorkerProcess]]:
    with (
        celery_worker(APP, env, concurrency=3) as first,
        celery_worker(APP, env, concurrency=3) as second,
    ):
        yield [first, second]


def output(workers: list[WorkerProcess]) -> str:
    return "\n".join(w.output for w in workers)


def finish(results: list[Any], workers: list[WorkerProcess]) -> None:
    for result in results:
        try:
            assert result.get(timeout=90) == "done"
        except Exception as exc:
            raise AssertionError(f"{result.id}: {exc!r}\n{output(workers)[-6000:]}") from exc


def starts(effects: redis.Redis, run: str, of: str = "starts") -> list[tuple[str, float]]:
    """(task id, time) of each body's start (Redis's clock), in order; ``of="takes"``:
    of each take of a slot (``lim.api`` only: the limit backend's clock, in ms)."""
    return [
        (job, float(at))
        for job, at in (entry.decode().split() for entry in effects.lrange(f"{of}:{run}", 0, -1))
    ]


def test_no_more_than_n_run_at_once_and_n_do(app: Any, workers: list[WorkerProcess]) -> None:
    """concurrency(3) over six pool processes on two workers: exactly three at once at
    the most, the others wait without spending an attempt, and every job runs once."""
    run = uuid.uuid4().hex[:8]
    results = [app.erp.delay(run, 0.3) for _ in range(15)]
    finish(results, workers)
    effects = app.effects
    assert int(effects.get(f"top:{run}") or 0) == 3, output(workers)
    assert int(effects.get(f"running:{run}") or 0) == 0
    assert len(starts(effects, run)) == 15  # each body ran once
    events = [e for r in results for e in recorded(app.app.conf.broker_url, r.id, 1)]
    limited = [e for e in events if e["counted_as"] == "limited"]
    assert limited, "six processes, three slots: some jobs must have waited"
    assert all(e["outcome"] == "snoozed" and e["rule"] == "limits" for e in limited)
    assert all("limited by concurrency(3, key='erp:{run}')" in e["reason"] for e in limited)
    # A wait spends no attempt: every job succeeded on its first.
    succeeded = [e for e in events if e["outcome"] == "succeeded"]
    assert len(succeeded) == 15 and {e["attempt"] for e in succeeded} == {1}


def test_no_more_than_n_start_per_window(app: Any, workers: list[WorkerProcess]) -> None:
    """rate(4, per=1): in any second, four starts at most (a sliding window)."""
    run = uuid.uuid4().hex[:8]
    results = [app.api.delay(run) for _ in range(12)]
    finish(results, workers)
    assert len(starts(app.effects, run)) == 12
    times = sorted(at for _, at in starts(app.effects, run, of="takes"))
    assert len(times) == 12
    # The fifth take after any take is at least a second after it (Redis's clock, in
    # milliseconds, as the take script read it). Body starts would not do: the time
    # between a take and its body's start differs from one execution to the next.
    gaps = [round(times[i + 4] - times[i], 3) for i in range(len(times) - 4)]
    assert min(gaps) >= 1.0, gaps
    # And the windows are used: twelve starts need three windows (just over 2 s); a
    # limit that made each waiter sit out a whole window, or poll, would take 8 s or more.
    assert times[-1] - times[0] < 6.0, times


def test_the_oldest_waiter_runs_before_newer_jobs(app: Any, workers: list[WorkerProcess]) -> None:
    """A job that waited is not starved by newer ones: when the slot frees, the job
    that has waited longest takes it, whoever asks first."""
    run = uuid.uuid4().hex[:8]
    broker = app.app.conf.broker_url
    holder = app.one.delay(run, 1.5)
    wait_until(lambda: app.effects.llen(f"starts:{run}") == 1, "the holder to start")
    old = app.one.delay(run, 0.05)
    wait_until(lambda: app.effects.llen(f"test:outcomes:{old.id}") >= 1, "the old job to wait once")
    newer = [app.one.delay(run, 0.05) for _ in range(5)]
    finish([holder, old, *newer], workers)
    order = [job for job, _ in starts(app.effects, run)]
    assert order[:2] == [holder.id, old.id], (order, old.id)
    assert recorded(broker, old.id, 1)[0]["counted_as"] == "limited"


def test_a_killed_holder_frees_its_slot_within_its_lease(
    app: Any, env: dict[str, str], redis_url: str
) -> None:
    """A whole worker SIGKILLed while its body holds a concurrency(1) slot: another
    job with the same key runs once the slot's lease (heartbeat 1 s + grace 2 s + 5 s,
    renewed by each beat) ends, not after a time limit (120 s)."""
    mine = {**env, "RELIABLE_TEST_BROKER": new_redis_db(redis_url)}  # not the module's
    client = Celery("limits-kill", broker=mine["RELIABLE_TEST_BROKER"], set_as_current=False)
    client.conf.result_backend = mine["RELIABLE_TEST_BROKER"]
    effects = redis.Redis.from_url(mine["RELIABLE_TEST_BROKER"])
    run = uuid.uuid4().hex[:8]
    with celery_worker(APP, mine, concurrency=1, new_session=True) as doomed:
        client.send_task("lim.beating", (run, 300))
        wait_until(lambda: effects.llen(f"starts:{run}") == 1, "the holder to start")
        with celery_worker(APP, mine, concurrency=1) as other:
            doomed.kill_group()
            killed_at = float(effects.time()[0]) + effects.time()[1] / 1e6
            effects.decr(f"running:{run}")  # the killed body never left
            second = client.send_task("lim.beating", (run, 0.1))
            assert second.get(timeout=60) == "done", other.output
    began = dict(starts(effects, run))[second.id]
    lease = app.beating._reliable_slots.shapes[0][2] / 1000  # 1 + 2 + 5 s
    assert lease == 8.0
    assert began - killed_at < lease + 3.0, (began - killed_at, other.output)
    # It did wait for the lease: the slot was not simply free.
    assert began - killed_at > lease - 3.0, (began - killed_at, other.output)


def test_the_docs_example_runs_and_waits_its_turn(redis_url: str, tmp_path: Any) -> None:
    """docs/limits.md's example on a real Redis and an embedded worker: a job takes and
    gives back its slots; with the ERP's five slots held elsewhere, the next one waits
    (SNOOZED, counted as ``limited``, no attempt spent) and runs once they are given
    back. An eager call takes no slot, as Celery's rate_limit does not apply to it."""
    from celery import _state as celery_state

    from celery_reliable import Outcome
    from celery_reliable.limits.parts import Part, Taken
    from celery_reliable.limits.redis_slots import RedisSlots
    from celery_reliable.testing import capture_outcomes, perform_task
    from tests.docs_blocks import DOCS, marked_block
    from tests.support.workers import embedded_worker

    broker = new_redis_db(redis_url)
    code = marked_block(DOCS / "limits.md", "limits-example")
    code = code.replace("redis://localhost:6379/0", broker)
    code = code.replace("sqlite:///reliable.db", f"sqlite:///{tmp_path}/reliable.db")
    scope: dict[str, Any] = {"__name__": "limits_docs"}
    # The example's @app.task is shared (Celery's default): every app finalized later in
    # this process would get its limited task, and a worker on a broker that is not
    # Redis refuses to start with one. Keep it to the example's app.
    finalizers = set(celery_state._on_app_finalizers)
    try:
        exec(compile(code, "limits.md", "exec"), scope)
    finally:
        celery_state._on_app_finalizers.intersection_update(finalizers)
    app, sync_repo = scope["app"], scope["sync_repo"]
    app.conf.result_backend = broker
    slots = RedisSlots(broker)
    erp = Part("c", "concurrency:erp", 5, 60_000)
    try:
        with embedded_worker(app), capture_outcomes() as seen:
            assert sync_repo.delay("acme", "api").get(timeout=30) == "acme/api synced"
            # Given back by a thread of the worker's process, just after the result.
            wait_until(lambda: slots.holders(erp) == 0, "the slot given back", timeout=5)
            held = [slots.take(f"other{n}", 0, f"other{n}:t", [erp]) for n in range(5)]
            assert all(isinstance(h, Taken) for h in held)
            waiting = sync_repo.delay("acme", "web")
            wait_until(
                lambda: any(e.task_id == waiting.id for e in seen), "the job to wait its turn"
            )
            for n, h in enumerate(held):
                assert isinstance(h, Taken)
                slots.give_back(f"other{n}:t", h.at_ms, [erp])
            assert waiting.get(timeout=30) == "acme/web synced"
        mine = [e for e in seen if e.task_id == waiting.id]
        assert [e.counted_as for e in mine] == ["limited", "succeeded"], mine
        assert "limited by concurrency(5, key='erp') on 'erp'" in mine[0].reason
        assert mine[1].attempt == 1  # the wait spent no attempt
        # Eager: no slot taken, even with the limit full.
        for n in range(5):
            assert isinstance(slots.take(f"x{n}", 0, f"x{n}:t", [erp]), Taken)
        eager = perform_task(sync_repo, ("acme", "cli"))
        assert eager.outcome is Outcome.SUCCEEDED and eager.result == "acme/cli synced"
    finally:
        slots.close()
        reset(app)


def test_a_limits_backend_that_is_down_is_retried_by_the_rules(redis_url: str) -> None:
    """Redis for the limits unreachable: the body does not run, the built-in
    StoreUnavailable rule retries the job (nothing lost), and the reason says where."""
    from celery_reliable import ReliableTask
    from celery_reliable.limits import concurrency
    from celery_reliable.testing import capture_outcomes
    from tests.support.celery_apps import new_app
    from tests.support.workers import embedded_worker

    app = new_app(redis_url, "limits_down", reliable_limits_url="redis://127.0.0.1:1/0")
    ran: list[str] = []

    @app.task(base=ReliableTask, name="ld.sync", shared=False, timeout=10, limits=[concurrency(1)])
    def sync() -> None:
        ran.append("ran")

    try:
        with embedded_worker(app), capture_outcomes() as seen:
            result = sync.delay()
            wait_until(lambda: any(e.task_id == result.id for e in seen), "the first outcome")
        first = next(e for e in seen if e.task_id == result.id)
        assert first.outcome.value == "retried", first
        assert type(first.exc).__name__ == "LimitsUnavailable"
        assert "limits: taking a slot in Redis at redis://127.0.0.1:1/0 failed" in first.reason
        assert ran == []
    finally:
        reset(app)
