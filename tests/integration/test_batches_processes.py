"""Batches across real ``celery worker`` processes (prefork), a real Redis, a SQLite and a
PostgreSQL store.

* The last two members end at the same instant on two workers (released by one Redis
  push), many times over: each batch completes once, its callbacks run once, its
  counts are exact.
* A member ended by its hard time limit (by the worker's main process) is counted.
* A worker SIGKILLed mid-batch, with a member inside its body, or with a member whose
  end was counted but whose message was not yet acked: the survivor rescues the
  message and runs it again; the member is counted once, the callbacks fire once.
* A member that ends while the store cannot count it: its ending waits in the broker's
  Redis, held by a worker's counter; every worker is SIGKILLed while it does (nothing
  of it is in a process's memory); the store comes back, a new worker moves it back
  (its holder's process is gone) and counts it once, and the member's body ran once.

Absence (no second callback) is proven by a later event: a last batch published after
everything else, whose callback the same workers run after any earlier message (the
outbox is published in order, and the queue is a FIFO).
"""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery_reliable import Batch
from celery_reliable.store import Store, store_for
from celery_reliable.store.batches import ENDINGS
from tests.support.batch_endings import held_endings
from tests.support.celery_apps import helper_app_module, new_redis_db
from tests.support.outcomes import recorded
from tests.support.store_faults import batch_tables_away
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

APP = "tests.support.apps.batches"


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def env(broker: str, module_store_url: str) -> dict[str, str]:
    return {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": module_store_url}


@pytest.fixture(scope="module")
def helper(env: dict[str, str], module_store_url: str) -> Any:
    return helper_app_module(APP, env, module_store_url)


@pytest.fixture(scope="module")
def store(helper: Any) -> Store:
    found = store_for(helper.app)
    assert found is not None
    return found


@pytest.fixture(scope="module")
def effects(broker: str) -> redis.Redis:
    return redis.Redis.from_url(broker)


@pytest.fixture
def workers(env: dict[str, str], helper: Any) -> Iterator[list[WorkerProcess]]:
    """Two workers of one process each, each in a process group of its own (a test may
    SIGKILL one whole)."""
    with (
        celery_worker(APP, env, concurrency=1, new_session=True) as first,
        celery_worker(APP, env, concurrency=1, new_session=True) as second,
    ):
        yield [first, second]


def key(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def got(effects: redis.Redis, label: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in effects.lrange(f"got:{label}", 0, -1)]


def wait_got(effects: redis.Redis, label: str, timeout: float = 30) -> list[dict[str, Any]]:
    return wait_until(
        lambda: got(effects, label),
        f"the callback of {label}",
        timeout=timeout,
        seen=lambda: got(effects, label),
    )


def counts(**given: int) -> dict[str, int]:
    return {outcome: given.get(outcome, 0) for outcome in ENDINGS}


def last_batch(helper: Any, effects: redis.Redis) -> None:
    """A batch published after everything else: once its callback ran, the workers
    have run every message published before it (callbacks included)."""
    label = key("last")
    with Batch(on_complete=helper.collect.s(label)):
        helper.step.delay(key("last"))
    wait_got(effects, label)


def test_the_last_two_members_ending_at_once_on_two_workers_complete_once(
    helper: Any, store: Store, effects: redis.Redis, broker: str, workers: list[WorkerProcess]
) -> None:
    rounds = []
    for _ in range(8):
        label, gate = key("race"), key("gate")
        with Batch(
            on_complete=helper.collect.s(f"{label}:complete"),
            on_success=helper.collect.s(f"{label}:success"),
        ) as batch:
            helper.step.delay(key("s"))
            helper.gate.delay(gate)
            helper.gate.delay(gate)
        # Both gates run, one on each worker (one process each), then open at once.
        started = wait_until(
            lambda gate=gate: len(found := effects.lrange(f"started:{gate}", 0, -1)) == 2 and found,
            "both gated members running",
        )
        assert len(set(started)) == 2, "the two gated members ran on one worker"
        wait_until(
            lambda batch=batch: (b := store.batches.get(batch.id)) and b.done == 1,
            "the first member counted",
        )
        effects.rpush(f"gate:{gate}", 1, 1)
        rounds.append((batch, label))
    for batch, label in rounds:
        for which in ("complete", "success"):
            (summary,) = wait_got(effects, f"{label}:{which}")
            assert summary["total"] == 3 and summary["outcomes"] == counts(succeeded=3)
        stored = store.batches.get(batch.id)
        assert stored is not None and (stored.state, stored.done, stored.total) == (
            "completed",
            3,
            3,
        )
    last_batch(helper, effects)
    for batch, label in rounds:
        assert len(got(effects, f"{label}:complete")) == len(got(effects, f"{label}:success")) == 1
        assert len(recorded(broker, f"{batch.id}-on_complete", 1)) == 1
    assert store.outbox.all() == []


@pytest.mark.parametrize("point", ["body", "ended"])
def test_a_worker_sigkilled_mid_batch_counts_each_member_once_and_fires_once(  # noqa: PLR0917 - fixtures
    helper: Any,
    store: Store,
    effects: redis.Redis,
    broker: str,
    workers: list[WorkerProcess],
    point: str,
) -> None:
    label, victim = key("killed"), key("victim")
    with Batch(on_complete=helper.collect.s(label)) as batch:
        steps = [helper.step.delay(key("s")) for _ in range(4)]
        doomed = helper.victim.delay(victim, point)
    group_id = int(
        wait_until(
            lambda: effects.get(f"at-kill-point:{victim}"),
            f"the victim at its kill point ({point})",
        )
    )
    [dying] = [w for w in workers if w.proc.pid == group_id]
    if point == "ended":
        # Its end is counted (the batch's receiver pushed it before this one ran, and a
        # counter counted it), its message not acked.
        wait_until(
            lambda: (
                store.batches.members(batch.id).count((doomed.id, "bp.victim", "succeeded")) == 1
            ),
            "the victim's end counted",
        )
    os.killpg(group_id, signal.SIGKILL)
    dying.proc.wait(10)
    # The survivor rescues the message and runs it again.
    wait_until(lambda: int(effects.get(f"runs:{victim}") or 0) >= 2, "the victim's second run")
    (summary,) = wait_got(effects, label, timeout=60)
    assert summary["total"] == 5 and summary["outcomes"] == counts(succeeded=5)
    if point == "ended":
        # The second run's end came after the completion, and added nothing.
        recorded(broker, doomed.id, 2)
    last_batch(helper, effects)
    assert len(got(effects, label)) == 1
    stored = store.batches.get(batch.id)
    assert stored is not None and (stored.done, stored.total) == (5, 5)
    assert {r.id for r in steps} | {doomed.id} == set(batch.members)
    # The callback's body ran once (above). Its message may have been published twice:
    # the SIGKILLed worker's relay can die between its publish and its delete, and the
    # survivor's publishes the row again, whose copy ends DUPLICATE, never runs.
    outcomes = [e["outcome"] for e in recorded(broker, f"{batch.id}-on_complete", 1)]
    assert outcomes.count("succeeded") == 1, outcomes
    assert set(outcomes) <= {"succeeded", "duplicate"}, outcomes


def test_a_member_ended_by_its_hard_time_limit_is_counted(
    helper: Any, store: Store, effects: redis.Redis, workers: list[WorkerProcess]
) -> None:
    """The worker's main process ends it (the body never decides): still one ending,
    FAILED, counted by the batch header of its message."""
    label, name = key("limit"), key("stuck")
    with Batch(on_complete=helper.collect.s(label)) as batch:
        helper.step.delay(key("s"))
        stuck = helper.stuck.delay(name)
    (summary,) = wait_got(effects, label)
    assert summary["total"] == 2
    assert summary["outcomes"] == counts(succeeded=1, failed=1)
    assert summary["failed"] == [stuck.id]
    last_batch(helper, effects)
    assert len(got(effects, label)) == 1
    stored = store.batches.get(batch.id)
    assert stored is not None and (stored.done, stored.total) == (2, 2)


def test_an_ending_the_store_could_not_count_outlives_every_worker_sigkilled(  # noqa: PLR0917 - fixtures
    helper: Any,
    store: Store,
    effects: redis.Redis,
    broker: str,
    env: dict[str, str],
    workers: list[WorkerProcess],
) -> None:
    label, gate = key("outage"), key("gate")
    with Batch(on_complete=helper.collect.s(label)) as batch:
        helper.step.delay(key("s"))
        member = helper.gate.delay(gate)
    wait_until(lambda: effects.llen(f"started:{gate}") == 1, "the gated member running")
    wait_until(
        lambda: (b := store.batches.get(batch.id)) and b.done == 1, "the first member counted"
    )
    with batch_tables_away(store):
        effects.rpush(f"gate:{gate}", 1)
        recorded(broker, member.id, 1)
        # Its ending waits in the broker's Redis, held by a worker's counter that could
        # not count it: then every worker dies, and a new one (on this host: it finds
        # the holder's process gone) moves it back and counts it.
        wait_until(
            lambda: member.id in held_endings(helper.app),
            "the ending held",
            seen=lambda: (
                member.id,
                {
                    k: effects.lrange(k, 0, -1)
                    for k in effects.scan_iter("celery_reliable.batch*")
                    if effects.type(k) == b"list"
                },
            ),
        )
        for worker in workers:
            worker.kill_group()
        assert member.id in held_endings(helper.app)
    with celery_worker(APP, env, concurrency=1, new_session=True):
        (summary,) = wait_got(effects, label, timeout=60)
        assert summary["total"] == 2 and summary["outcomes"] == counts(succeeded=2)
        last_batch(helper, effects)
    assert len(got(effects, label)) == 1
    stored = store.batches.get(batch.id)
    assert stored is not None and (stored.state, stored.done, stored.total) == ("completed", 2, 2)
    # The member's body ran once: its ending was counted, not its message run again.
    assert effects.llen(f"started:{gate}") == 1
    assert len(recorded(broker, member.id, 1)) == 1


def test_a_member_that_ends_during_a_warm_shutdown_is_counted_by_its_own_worker(
    helper: Any, store: Store, effects: redis.Redis, env: dict[str, str]
) -> None:
    """SIGTERM while a member runs: the worker finishes it (a warm shutdown), and its
    counter, kept running until the pool has finished, counts the member's ending
    before the process exits: the batch completes with no other worker to count it."""
    label, gate = key("warm"), key("gate")
    with celery_worker(APP, env, concurrency=1, new_session=True) as worker:
        with Batch(on_complete=helper.collect.s(label)) as batch:
            helper.gate.delay(gate)
        wait_until(lambda: effects.llen(f"started:{gate}") == 1, "the member running")
        worker.proc.send_signal(signal.SIGTERM)
        # The worker's step has stopped (the consumer too): only then may the member end.
        wait_until(
            lambda: "counting batch endings until the pool has finished" in worker.output,
            "the warm shutdown past the worker's step",
            seen=lambda: worker.output[-2000:],
        )
        effects.rpush(f"gate:{gate}", 1)
        assert worker.proc.wait(30) == 0, worker.output
    stored = store.batches.get(batch.id)
    assert stored is not None
    assert (stored.state, stored.done, stored.total) == ("completed", 1, 1), worker.output
