"""The beat scheduler's rules, in this process, with its clock stepped by the test:
schedulers ticking in turn over interval and crontab entries for minutes of schedule
time, the catch-up after every beat was down (with a catch-up of 0 too), a message
that cannot be built, a broker that refuses. Real Redis (the messages are read back
from its queue) and a SQLite and a PostgreSQL store; ``test_beat.py`` runs the same
scheduler in real ``celery beat`` processes.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
from celery import Celery
from celery.schedules import crontab, maybe_schedule

from celery_reliable.beat import Scheduler
from celery_reliable.beat.timeline import iso, slots_between, timeline_for
from celery_reliable.headers import BEAT_HEADER
from celery_reliable.store import migrate, store_for
from tests.support.celery_apps import new_redis_db
from tests.support.servers import free_port

pytestmark = pytest.mark.integration

UTC = timezone.utc
START = datetime(2026, 12, 7, 9, 59, 58, 500_000, tzinfo=UTC)
SCHEDULE = {
    "every-10s": {"task": "rules.tick", "schedule": 10.0, "args": ("10s",)},
    "every-minute": {"task": "rules.tick", "schedule": crontab(), "args": ("minute",)},
}


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_app(broker: str, store_url: str, **conf: Any) -> Celery:
    app = Celery("rules", broker=broker, set_as_current=False)
    app.conf.update(
        reliable_database_url=store_url,
        beat_schedule=conf.pop("beat_schedule", SCHEDULE),
        broker_connection_retry_on_startup=False,
        **conf,
    )
    return app


@pytest.fixture
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


@pytest.fixture
def app(broker: str, store_url: str) -> Iterator[Celery]:
    built = make_app(broker, store_url)
    store = store_for(built)
    assert store is not None
    migrate.upgrade(store.engine)
    yield built
    store.dispose()


def beat(app: Celery, ident: str, clock: Clock) -> Scheduler:
    scheduler = Scheduler(app=app)
    scheduler.ident = ident
    scheduler.clock = clock  # type: ignore[method-assign]
    return scheduler


def published(broker: str) -> list[tuple[str, str]]:
    """(entry, due) of every message on the default queue, oldest first."""
    found = []
    # kombu pushes each message at the head of the list (and pops at its tail).
    for raw in reversed(redis.Redis.from_url(broker).lrange("celery", 0, -1)):
        headers = json.loads(raw)["headers"]
        mark = headers[BEAT_HEADER]
        found.append((mark["entry"], mark["due"]))
    return found


def slots(app: Celery, entry: str, after: datetime, until: datetime) -> list[str]:
    """The entry's slots in (after, until], as the scheduler names them."""
    schedule = maybe_schedule(app.conf.beat_schedule[entry]["schedule"], app=app)
    found, _ = slots_between(
        timeline_for(schedule), after, until + timedelta(microseconds=1), 10_000
    )
    return [iso(s) for s in found]


def test_two_schedulers_ticking_in_turn_publish_each_slot_once(app: Celery, broker: str) -> None:
    clock = Clock(START)
    a, b = beat(app, "a", clock), beat(app, "b", clock)
    first_look = START
    for second in range(300):
        clock.step(1)
        # In turn, both at one moment now and then (the second finds the first's rows).
        (a if second % 3 else b).tick()
        if second % 7 == 0:
            (b if second % 3 else a).tick()
    sent = published(broker)
    assert all(count == 1 for count in Counter(sent).values()), Counter(sent).most_common(3)
    for entry in ("every-10s", "every-minute"):
        expected = slots(app, entry, first_look, clock.now)
        assert sorted(due for name, due in sent if name == entry) == expected
    # The crontab's slots are whole minutes, the interval's multiples of 10 s.
    assert [due for name, due in sent if name == "every-minute"][:2] == [
        "2026-12-07T10:00:00.000000Z",
        "2026-12-07T10:01:00.000000Z",
    ]
    rows = store_for(app).beat_runs.all()  # type: ignore[union-attr]
    assert {row.claimed_by for row in rows} == {"a", "b"}
    assert {row.state for row in rows} == {"published"}


def test_after_every_beat_was_down_the_newest_slots_are_caught_up(
    app: Celery, broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="celery_reliable.beat")
    clock = Clock(START)
    a = beat(app, "a", clock)
    for _ in range(62):  # until 10:01:00.5
        clock.step(1)
        a.tick()
    last = clock.now
    clock.step(300)  # every beat down for 5 minutes: back at 10:06:00.5
    app.conf.reliable_beat_catch_up = 60
    from celery_reliable.config import forget_settings

    forget_settings(app)
    b = beat(app, "b", clock)
    b.tick()
    sent = published(broker)
    window = clock.now - timedelta(seconds=60)
    for entry in ("every-10s", "every-minute"):
        ours = [due for name, due in sent if name == entry]
        expected = slots(app, entry, START, last) + slots(
            app, entry, window - timedelta(microseconds=1), clock.now
        )
        assert ours == expected, entry
    lines = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.beat"]
    assert (
        "celery_reliable beat: skipped 24 slots of 'every-10s' (due 2026-12-07T10:01:10.000000Z "
        "to 2026-12-07T10:05:00.000000Z): older than reliable_beat_catch_up (60s)"
    ) in lines
    assert (
        "celery_reliable beat: caught up 6 slots of 'every-10s' missed while no beat could "
        "publish (due 2026-12-07T10:05:10.000000Z to 2026-12-07T10:06:00.000000Z), within "
        "reliable_beat_catch_up (60s)"
    ) in lines
    assert (
        "celery_reliable beat: skipped 4 slots of 'every-minute' (due 2026-12-07T10:02:00.000000Z "
        "to 2026-12-07T10:05:00.000000Z): older than reliable_beat_catch_up (60s)"
    ) in lines
    assert (
        "celery_reliable beat: caught up 1 slot of 'every-minute' missed while no beat could "
        "publish (due 2026-12-07T10:06:00.000000Z), within reliable_beat_catch_up (60s)"
    ) in lines
    # A second beat coming back at the same moment neither skips nor says it again.
    caplog.clear()
    beat(app, "c", clock).tick()
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]
    assert published(broker) == sent


def test_a_catch_up_of_zero_publishes_only_what_is_due_from_the_first_look(
    broker: str, store_url: str
) -> None:
    app = make_app(broker, store_url, reliable_beat_catch_up=0)
    migrate.upgrade(store_for(app).engine)  # type: ignore[union-attr]
    clock = Clock(START)
    a = beat(app, "a", clock)
    for _ in range(12):
        clock.step(1)
        a.tick()
    clock.step(100)
    b = beat(app, "b", clock)
    b.tick()
    before = published(broker)
    clock.step(10)  # the next 10-second slot, due after b's first look
    b.tick()
    ten = [due for name, due in published(broker) if name == "every-10s"]
    assert ten == ["2026-12-07T10:00:00.000000Z", "2026-12-07T10:00:10.000000Z",
                   "2026-12-07T10:02:00.000000Z"]  # fmt: skip
    # Only the slots due after the first look: 10:02:00 of each entry.
    assert published(broker)[len(before) :] in (
        [
            ("every-10s", "2026-12-07T10:02:00.000000Z"),
            ("every-minute", "2026-12-07T10:02:00.000000Z"),
        ],
        [
            ("every-minute", "2026-12-07T10:02:00.000000Z"),
            ("every-10s", "2026-12-07T10:02:00.000000Z"),
        ],
    )


def test_a_message_that_cannot_be_built_is_marked_failed_and_the_rest_go_on(
    broker: str, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    schedule = {
        "bad": {"task": "rules.tick", "schedule": 10.0, "args": (object(),)},
        "good": {"task": "rules.tick", "schedule": 10.0, "args": ("good",)},
    }
    app = make_app(broker, store_url, beat_schedule=schedule)
    migrate.upgrade(store_for(app).engine)  # type: ignore[union-attr]
    clock = Clock(START)
    a = beat(app, "a", clock)
    for _ in range(25):
        clock.step(1)
        a.tick()
    assert [name for name, _ in published(broker)] == ["good"] * 3
    runs = store_for(app).beat_runs  # type: ignore[union-attr]
    assert [r.state for r in runs.all("bad")] == ["failed"] * 3
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors[0].startswith(
        "celery_reliable beat: the slot of 'bad' due 2026-12-07T10:00:00.000000Z cannot be "
        "published (EncodeError: "
    )
    assert errors[0].endswith("); it is marked failed")


def test_a_beat_whose_broker_refuses_gives_its_claim_back_to_one_whose_broker_answers(
    broker: str, store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celery_reliable.beat")
    down = make_app(f"redis://127.0.0.1:{free_port()}/0", store_url, task_publish_retry=False)
    migrate.upgrade(store_for(down).engine)  # type: ignore[union-attr]
    up = make_app(broker, store_url)
    clock = Clock(datetime.now(UTC))
    cut_off = beat(down, "cut-off", clock)
    cut_off.tick()  # where each entry stands: nothing due yet
    clock.step(61)  # both entries due
    cut_off.tick()  # claims a slot, cannot publish it, gives it back, claims no more
    runs = store_for(down).beat_runs  # type: ignore[union-attr]
    [claimed] = runs.all()
    assert (claimed.state, claimed.claimed_by) == ("claimed", "cut-off")
    assert cut_off.tick() > 0  # nothing tried until its broker's next try
    lines = [r.getMessage() for r in caplog.records if r.name == "celery_reliable.beat"]
    [refused] = [line for line in lines if "the broker is unreachable" in line]
    assert refused.endswith(
        "this beat claims nothing until it answers (the slot claimed is given back)"
    )
    clock.step(0.001)
    fine = beat(up, "fine", clock)
    fine.tick()  # takes the claim given back over and publishes it
    assert (claimed.entry, iso(claimed.due_at.replace(tzinfo=UTC))) in published(broker)
    assert runs.all(claimed.entry)[0].state == "published"
    assert any("was claimed by cut-off, which did not say it published it" in r.getMessage()
               for r in caplog.records)  # fmt: skip
