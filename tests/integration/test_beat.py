"""Periodic jobs published once per due time (``celery_reliable.beat:Scheduler``), with
real ``celery beat`` processes, a real ``celery worker`` (solo: one queue, first in
first out), a real Redis, a SQLite and a PostgreSQL store.

* Two and three beats over a 1-second entry: each due time is published once (one
  message received per slot) and runs once; the slots have no gap.
* A beat SIGKILLed and restarted mid-run: still once each, no gap.
* A slot claimed by a beat that died before publishing (a claimed row whose lease ran
  out, as a SIGKILL there leaves it), or after publishing but before marking it: the
  next beat publishes it under the same task id, and it runs once (the second copy a
  DUPLICATE).
* Every beat down for 22 s, ``reliable_beat_catch_up`` 5 s: the slots older than
  5 s are skipped (never published), the newer ones caught up, each said in one log
  line.
* The store down (PostgreSQL stopped): one line, nothing published until it answers,
  then the missed slots caught up.

What did not run is proven by a later event: a sentinel job published after every
beat stopped ran, so every message published before it had run.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery

from celery_reliable.beat.timeline import iso, task_id_for
from celery_reliable.headers import BEAT_HEADER
from celery_reliable.store import Store, migrate, store_for
from celery_reliable.store.beat import BeatRun
from celery_reliable.store.timeutil import utcnow
from tests.support.beat import BeatProcess, celery_beats
from tests.support.celery_apps import new_redis_db
from tests.support.outcomes import recorded
from tests.support.servers import PostgresServer
from tests.support.waiting import wait_until
from tests.support.workers import WorkerProcess, celery_worker

pytestmark = [pytest.mark.integration, pytest.mark.prefork]

APP = "tests.support.apps.beat"
SECOND = timedelta(seconds=1)


@pytest.fixture(scope="module")
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture(scope="module")
def env(broker: str, module_store_url: str) -> dict[str, str]:
    return {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": module_store_url}


@pytest.fixture(scope="module")
def store(module_store_url: str) -> Iterator[Store]:
    app = Celery("beat-test-store", set_as_current=False)
    app.conf.reliable_database_url = module_store_url
    found = store_for(app)
    assert found is not None
    migrate.upgrade(found.engine)  # PostgreSQL must be at head before a beat uses it
    yield found
    found.dispose()


@pytest.fixture(scope="module")
def effects(broker: str) -> redis.Redis:
    return redis.Redis.from_url(broker)


@pytest.fixture(scope="module")
def worker(env: dict[str, str], store: Store) -> Iterator[WorkerProcess]:
    with celery_worker(APP, env, pool="solo", concurrency=1) as running:
        yield running


@pytest.fixture(scope="module")
def helper(env: dict[str, str]) -> Any:
    """The app, in this process: to publish the sentinel (and a copy of a slot)."""
    os.environ.update(env)
    from tests.support.apps import beat

    return beat


@dataclass
class Rig:
    """What every test here uses: the environment of the processes, the module's
    store, the Redis the body counts its runs in, the worker, the app in this process."""

    env: dict[str, str]
    store: Store
    effects: redis.Redis
    worker: WorkerProcess
    broker: str
    helper: Any

    def assert_each_slot_ran_once(self, entry: str, store: Store | None = None) -> list[BeatRun]:
        return assert_each_slot_ran_once(
            store or self.store, self.effects, self.worker, self.broker, entry
        )


@pytest.fixture
def rig(
    env: dict[str, str],
    store: Store,
    effects: redis.Redis,
    worker: WorkerProcess,
    helper: Any,
) -> Rig:
    return Rig(env, store, effects, worker, env["RELIABLE_TEST_BROKER"], helper)


def entry_env(env: dict[str, str], entry: str, **more: str) -> dict[str, str]:
    return {**env, "RELIABLE_TEST_BEAT_ENTRY": entry, **more}


def new_entry(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def published(store: Store, entry: str) -> list[BeatRun]:
    return [run for run in store.beat_runs.all(entry) if run.state == "published"]


def runs(effects: redis.Redis, entry: str) -> dict[str, int]:
    """What ran: due time -> executions of the body."""
    return {k.decode(): int(v) for k, v in effects.hgetall(f"runs:{entry}").items()}


def settle(helper: Any) -> None:
    """Every message published so far has run: a sentinel published after it did."""
    helper.sentinel.delay().get(timeout=60)


def aware(run: BeatRun) -> datetime:
    return run.due_at.replace(tzinfo=timezone.utc)


def seconds_from(first: datetime, last: datetime) -> list[datetime]:
    return [first + n * SECOND for n in range(int((last - first) / SECOND) + 1)]


def assert_each_slot_ran_once(
    store: Store, effects: redis.Redis, worker: WorkerProcess, broker: str, entry: str
) -> list[BeatRun]:
    """Every row is published, the slots follow each other without a gap, each was
    received by the worker once and ran once; nothing ran that has no row."""
    rows = store.beat_runs.all(entry)
    assert rows and all(row.state == "published" for row in rows), rows
    assert all(row.publishes == 1 for row in rows), [r for r in rows if r.publishes != 1]
    dues = [aware(row) for row in rows]
    assert dues == seconds_from(dues[0], dues[-1]), "a slot is missing"
    ran = runs(effects, entry)
    assert ran == {iso(due): 1 for due in dues}, ran
    for row in rows:
        assert row.task_id == task_id_for(entry, "bt.tick", aware(row))
        assert worker.output.count(f"bt.tick[{row.task_id}] received") == 1
        assert [e["outcome"] for e in recorded(broker, row.task_id, 1)] == ["succeeded"]
    return rows


@pytest.mark.parametrize("count", [2, 3])
def test_n_beats_publish_each_due_time_once(rig: Rig, count: int) -> None:
    entry = new_entry(f"beats-{count}")
    with celery_beats(APP, entry_env(rig.env, entry), count) as beats:
        wait_until(lambda: len(published(rig.store, entry)) >= 8, "8 slots", timeout=40)
    settle(rig.helper)
    rows = rig.assert_each_slot_ran_once(entry)
    said = [len(beat.said(f"published {entry} (bt.tick)")) for beat in beats]
    assert sum(said) == len(rows), [beat.output for beat in beats]
    assert {row.claimed_by for row in rows} <= {beat_ident(beat) for beat in beats}
    for beat in beats:
        assert beat.proc.returncode == 0, beat.output


def test_a_beat_killed_and_restarted_mid_run(rig: Rig) -> None:
    entry = new_entry("killed")
    child_env = entry_env(rig.env, entry)
    store = rig.store
    with celery_beats(APP, child_env, 2) as beats:
        wait_until(lambda: len(published(store, entry)) >= 4, "4 slots published")
        beats[0].kill()
        before = len(published(store, entry))
        wait_until(lambda: len(published(store, entry)) >= before + 3, "3 by the other beat")
        restarted = BeatProcess(APP, child_env, "beat-0-again")
        try:
            restarted.wait_started()
            again = len(published(store, entry))
            wait_until(lambda: len(published(store, entry)) >= again + 4, "4 slots more")
            # A claim the SIGKILL cut before its publish is taken over by a live beat.
            wait_until(
                lambda: all(r.state == "published" for r in store.beat_runs.all(entry)),
                "every claim published",
                timeout=30,
            )
        finally:
            restarted.stop()
    settle(rig.helper)
    rig.assert_each_slot_ran_once(entry)
    assert beats[0].proc.returncode == -9


def beat_ident(beat: BeatProcess) -> str:
    return f"{os.uname().nodename}:{beat.proc.pid}"


@pytest.mark.parametrize("published_first", [False, True], ids=["before", "after"])
def test_a_slot_claimed_by_a_beat_that_died_is_published_by_the_next_and_runs_once(
    rig: Rig, published_first: bool
) -> None:
    """The row a beat SIGKILLed between its claim and its publish (``before``), or
    between its publish and its mark (``after``: the message is on the queue) leaves:
    claimed, its lease run out."""
    entry = new_entry(f"died-{'after' if published_first else 'before'}")
    store = rig.store
    due = (datetime.now(timezone.utc) - 3 * SECOND).replace(microsecond=0)
    task_id = task_id_for(entry, "bt.tick", due)
    assert store.beat_runs.claim(
        entry,
        due.replace(tzinfo=None),
        task_name="bt.tick",
        task_id=task_id,
        by="dead-host:1",
        lease_seconds=0.001,
    )
    if published_first:
        # As the dead beat published it (the scheduler's own headers).
        rig.helper.tick.apply_async(
            (entry,),
            task_id=task_id,
            headers={"celery_beat_task": True, BEAT_HEADER: {"entry": entry, "due": iso(due)}},
        )
        assert [e["outcome"] for e in recorded(rig.broker, task_id, 1)] == ["succeeded"]
    with celery_beats(APP, entry_env(rig.env, entry), 1) as [beat]:
        wait_until(lambda: store.beat_runs.all(entry)[0].state == "published", "taken over")
        wait_until(lambda: len(published(store, entry)) >= 3, "2 slots after it")
    settle(rig.helper)
    [line] = beat.said("which did not say it published it")
    assert f"the slot of {entry!r} due {iso(due)} was claimed by dead-host:1" in line
    assert f"publishing it as {task_id}" in line
    copies = 2 if published_first else 1
    outcomes = [e["outcome"] for e in recorded(rig.broker, task_id, copies)]
    assert outcomes == ["succeeded", "duplicate"][:copies]
    assert rig.worker.output.count(f"bt.tick[{task_id}] received") == copies
    assert runs(rig.effects, entry)[iso(due)] == 1
    first, *later = store.beat_runs.all(entry)
    assert (first.state, first.publishes, first.claimed_by) == ("published", 1, beat_ident(beat))
    # The slots after it, from the next one: where the stored slot says it stands.
    assert [aware(r) for r in later] == seconds_from(due + SECOND, aware(later[-1]))
    assert runs(rig.effects, entry) == {iso(aware(r)): 1 for r in [first, *later]}


CAUGHT_UP = re.compile(r"caught up (\d+) slots? of '([^']+)' missed .* \(due (\S+)(?: to (\S+))?\)")
SKIPPED = re.compile(r"skipped (\d+) slots? of '([^']+)' \(due (\S+) to (\S+)\)")


def _parse(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


@pytest.mark.one_store_in_make_test("sqlite")
def test_every_beat_down_for_22s_catches_up_the_newest_slots_and_skips_the_rest(
    rig: Rig,
) -> None:
    entry = new_entry("down")
    store = rig.store
    child_env = entry_env(rig.env, entry, RELIABLE_TEST_BEAT_CATCH_UP="5")
    with celery_beats(APP, child_env, 2) as beats:
        wait_until(lambda: len(published(store, entry)) >= 3, "3 slots published")
        for beat in beats:
            beat.kill()
    # A claim cut by the SIGKILL before its publish, if any, is the newest row: it is
    # abandoned (older than the catch-up) when a beat comes back.
    last_before = aware(store.beat_runs.all(entry)[-1])
    # The outage itself, not a wait for something to happen: every beat down for 22 s
    # (more than 5 s of catch-up and the 15 slots at least skipped asserted below).
    time.sleep(22)
    first_back = BeatProcess(APP, child_env, "first-back")
    second_back: BeatProcess | None = None
    try:
        first_back.wait_started()
        wait_until(lambda: first_back.said("caught up "), "the catch-up said")
        second_back = BeatProcess(APP, child_env, "second-back")
        second_back.wait_started()
        mark = len(published(store, entry))
        wait_until(lambda: len(published(store, entry)) >= mark + 3, "3 slots after")
    finally:
        for beat in (first_back, second_back):
            if beat is not None:
                beat.stop()
    settle(rig.helper)

    assert second_back is not None
    lines = first_back.lines + second_back.lines
    [skipped] = [m for line in lines if (m := SKIPPED.search(line))]
    # (The second beat may publish a slot of its first look too, "caught up" as well.)
    [caught] = [m for line in first_back.lines if (m := CAUGHT_UP.search(line))]
    assert skipped[2] == caught[2] == entry
    skip_first, skip_last = _parse(skipped[3]), _parse(skipped[4])
    up_first, up_last = _parse(caught[3]), _parse(caught[4])
    # Skipped: every slot from the one after the newest row to 5 s before the restart;
    # caught up: the 5 s after it (with the slot due at the restart's first look).
    assert skip_first == last_before + SECOND
    assert int(skipped[1]) == len(seconds_from(skip_first, skip_last)) >= 15
    assert up_first == skip_last + SECOND
    assert int(caught[1]) == len(seconds_from(up_first, up_last)) in (5, 6)

    rows = store.beat_runs.all(entry)
    skip_rows = [r for r in rows if r.state == "skipped" and aware(r) > last_before]
    assert [(aware(r), r.skipped, r.skipped_from) for r in skip_rows] == [
        (skip_last, int(skipped[1]), skip_first.replace(tzinfo=None))
    ]
    ran = runs(rig.effects, entry)
    assert set(ran.values()) == {1}
    # Nothing of the skipped slots ran (the sentinel ran after every publish); every
    # slot published ran, once, and the published ones follow each other but for the
    # skipped ones (and one abandoned claim, if the SIGKILL cut one).
    dues = [aware(r) for r in rows if r.state == "published"]
    assert sorted(ran) == sorted(iso(d) for d in dues)
    gaps = [d for d in seconds_from(dues[0], dues[-1]) if d not in dues]
    skipped_slots = seconds_from(skip_first, skip_last)
    assert gaps in (skipped_slots, [last_before, *skipped_slots]), gaps


@pytest.mark.only_store("postgresql")  # its own PostgreSQL, stopped
def test_the_store_down_publishes_nothing_and_says_it_once(rig: Rig) -> None:
    """A PostgreSQL store of its own, stopped for a few seconds under a running beat;
    the module's worker keeps its receipts in the module's store."""
    server = PostgresServer()
    server.start()
    app = Celery("beat-down-store", set_as_current=False)
    app.conf.reliable_database_url = server.url
    own = store_for(app)
    assert own is not None
    migrate.upgrade(own.engine)
    entry = new_entry("store-down")
    child_env = entry_env(rig.env, entry, RELIABLE_TEST_STORE=server.url)
    try:
        with celery_beats(APP, child_env, 1) as [beat]:
            wait_until(lambda: len(published(own, entry)) >= 2, "2 slots published")
            server.stop()
            stopped = utcnow()  # from here to `restarting` the store is down for sure
            wait_until(lambda: beat.said("the store is unreachable"), "the outage said")
            time.sleep(4)  # the outage itself: a few slots due while the store is down
            restarting = utcnow()
            server.start()
            wait_until(lambda: beat.said("the store answers again"), "the store back", timeout=30)
            wait_until(
                lambda: (
                    (published(own, entry)[-1].published_at or stopped) > restarting + 3 * SECOND
                ),
                "2 s more",
            )
        [down] = beat.said("the store is unreachable")
        assert "nothing is published until it answers (a slot is published only once" in down
        assert len(beat.said("the store answers again")) == 1
        [caught] = [m for line in beat.lines if (m := CAUGHT_UP.search(line))]
        assert caught[2] == entry
        settle(rig.helper)
        rows = rig.assert_each_slot_ran_once(entry, store=own)
        # No slot was published while the store was down: those due then went out after.
        assert not [r for r in rows if r.published_at and stopped < r.published_at < restarting]
        missed = [r for r in rows if stopped < r.due_at < restarting]
        assert missed and all(r.published_at and r.published_at > restarting for r in missed)
        # The catch-up starts at the first of them: the look that first met the outage
        # was claiming it, and the first look that answered after one publishes it as
        # caught up. (The later ones may fall due while that look waits on the store
        # coming up: due since the previous look, on time by the rule.)
        first_missed = min(r.due_at for r in missed).replace(tzinfo=timezone.utc)
        assert _parse(caught[3]) == first_missed, (caught.group(0), first_missed)
    finally:
        own.dispose()
        server.remove()


@pytest.mark.parametrize(
    ("more", "said"),
    [
        (
            {"RELIABLE_TEST_STORE": ""},
            "reliable_database_url is None: celery_reliable.beat:Scheduler claims each due "
            "time in the store; set it to the database every beat shares",
        ),
        (
            {"RELIABLE_TEST_BEAT_CATCH_UP": "700000"},
            "reliable_beat_catch_up (700000s) must be shorter than reliable_receipt_ttl "
            "(604800s): a slot published twice runs once only while its receipt is kept",
        ),
    ],
    ids=["no-store", "catch-up-too-long"],
)
def test_a_beat_that_cannot_work_refuses_to_start_in_one_line(
    rig: Rig, more: dict[str, str], said: str
) -> None:
    beat = BeatProcess(APP, entry_env(rig.env, new_entry("refused"), **more), "refused")
    beat.proc.wait(60)
    beat.stop()
    assert beat.proc.returncode == 1, beat.output
    # (celery beat sends what is printed to its log: the line carries the log's prefix.)
    [line] = beat.said("celery_reliable: beat cannot start: ")
    assert line.endswith(f"celery_reliable: beat cannot start: {said}"), beat.output
    assert "Traceback" not in beat.output
