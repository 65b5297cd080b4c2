"""The chaos run: jobs whose effects go to PostgreSQL, on real prefork workers that are
SIGKILLed (whole process group) and restarted while Redis restarts and PostgreSQL
crashes.

    python -m tests.chaos.run [--jobs 2000] [--workers 2] [--kill-every 3]
                              [--mode atomic|plain|limits|outbox|batches|both|all]
                              [--limit 3]

Both servers run as production ones would: Redis with an fsync'd append-only file
(its queues survive a restart), PostgreSQL with fsync and synchronous commit on, and
stopped with ``-m immediate`` (a crash: what was not flushed is lost). It prints, per
mode, the figures the docs quote: jobs lost (no effect), effects duplicated, receipts
left in progress, wall time, and the longest a job waited from publish to its effect.
Exit status 1 when the ``atomic`` run lost a job or duplicated an effect.

``limits`` is the ``atomic`` run with the job under ``concurrency(3)`` (``--limit``),
its slots in the broker's Redis: what runs at once is counted outside the product, in
a Redis of its own that no fault touches (``tests/chaos/at_once.py``). It also prints
the most bodies seen at once, the waits for a slot (``limited``) and the bodies that
ran to their end twice; exit status 1 when more than n ran at once, or n never did.
``outbox`` (``tests/chaos/outbox.py``) has the jobs written with ``publish_in`` by
publisher processes, some transactions rolled back, and SIGKILLs publishers and relays
besides the workers; exit status 1 when a committed job was lost, an effect
duplicated, a job ran that never committed, or outbox rows were left.
``batches`` (``tests/chaos/batches.py``) has the jobs published in batches by
publisher processes, SIGKILLed besides the workers; exit status 1 when a job was lost,
an effect duplicated, a sealed batch did not complete, its callback did not run exactly
once, or a member's counted ending or the summary differs from what really happened.
``both`` is ``atomic`` and ``plain``; ``all`` adds ``limits``, ``outbox`` and ``batches``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlalchemy as sa

from tests.chaos import at_once
from tests.support.servers import PostgresServer, RedisServer
from tests.support.workers import WorkerProcess, celery_worker

APP = "tests.chaos.app"


@dataclass
class Plan:
    jobs: int = 2000
    workers: int = 2
    concurrency: int = 2
    kill_every: float = 3.0
    #: Seconds of faults (worker kills), from when the first workers are ready (as the
    #: server faults' moments); then the run drains in calm.
    chaos_for: float = 40.0
    #: Seconds into the run of each server fault (None: not this run).
    redis_restart_at: float | None = 8.0
    postgres_crash_at: float | None = 15.0
    postgres_down_for: float = 5.0
    visibility_timeout: float = 5.0
    job_seconds: float = 0.05
    deadline: float = 600.0
    mode: str = "atomic"
    seed: int = 7
    #: ``limits`` mode: the job's ``concurrency(limit)``.
    limit: int = 3
    #: ``outbox`` mode (``tests/chaos/outbox.py``): publisher processes, the seconds
    #: they take to write every job, the share of transactions rolled back on purpose,
    #: ``celery reliable relay`` processes, and how often a publisher and a relay are
    #: SIGKILLed.
    publishers: int = 3
    publish_for: float = 30.0
    rollback_share: float = 0.1
    relays: int = 1
    publisher_kill_every: float = 4.0
    relay_kill_every: float = 6.0


@dataclass
class Figures:
    mode: str
    jobs: int
    lost: int
    duplicated: int
    in_progress: int
    wall_time: float
    longest_wait: float
    kills: int
    events: list[str] = field(default_factory=list)
    #: Jobs that ended in a dead letter, by outcome (not lost: kept to be retried).
    dead_letters: dict[str, int] = field(default_factory=dict)
    #: The lost jobs, and what Redis still holds at the end (queued, unacknowledged).
    missing: list[int] = field(default_factory=list)
    missing_ids: list[str] = field(default_factory=list)
    broker_left: dict[str, int] = field(default_factory=dict)
    #: ``limits`` mode: the limit's n, and what the tally counted.
    limit: int | None = None
    counted: at_once.Counted | None = None

    def limit_broken(self) -> str | None:
        """Why the limits run failed its promise, or None."""
        counted = self.counted
        if self.limit is None or counted is None:
            return None
        if counted.top > self.limit:
            return f"{counted.top} bodies ran at once under concurrency({self.limit})"
        if counted.top < self.limit:
            return f"never {self.limit} bodies at once (at most {counted.top}): not reached"
        if counted.gaps:
            return f"{counted.gaps} tally gaps: a body's presence went stale while it ran"
        if counted.completed_twice:
            return f"{counted.completed_twice} jobs' bodies ran to their end twice"
        return None

    def lines(self) -> list[str]:
        counted = self.counted
        limits = (
            [
                f"  most bodies at once:        {counted.top} (concurrency({self.limit}))",
                f"  waits for a slot (limited): {counted.limited} "
                f"({counted.limited / max(self.jobs, 1):.1f} per job)",
                f"  bodies started:             {counted.starts} ({counted.killed} killed)",
                f"  bodies run to the end twice: {counted.completed_twice}",
                f"  tally gaps:                 {counted.gaps}",
            ]
            if counted is not None
            else []
        )
        return [
            f"chaos ({self.mode}): {self.jobs} jobs, {self.kills} worker kills, "
            f"{', '.join(self.events)}",
            f"  jobs lost:                  {self.lost}",
            f"  effects duplicated:         {self.duplicated}",
            f"  dead letters:               {self.dead_letters or 0}",
            f"  receipts left in progress:  {self.in_progress}",
            f"  wall time:                  {self.wall_time:.1f} s",
            f"  longest wait for an effect: {self.longest_wait:.1f} s",
            *limits,
            *(
                [
                    f"  lost: {self.missing[:20]} {self.missing_ids[:20]}; "
                    f"broker holds {self.broker_left}"
                ]
                if self.lost
                else []
            ),
        ]


def prepare_database(url: str) -> None:
    from celery_reliable.store import migrate
    from celery_reliable.store.engine import create_store_engine
    from tests.chaos.effects import metadata

    engine = create_store_engine(url)
    try:
        migrate.upgrade(engine)
        metadata.create_all(engine)
    finally:
        engine.dispose()


def publish(broker: str, jobs: int) -> list[str]:
    """Publish the jobs; returns their task ids, by job."""
    from celery import Celery

    client = Celery("chaos-client", broker=broker, set_as_current=False)
    ids = []
    with client.producer_or_acquire() as producer:
        for job_id in range(jobs):
            sent = client.send_task(
                "chaos.job", (job_id, time.time()), producer=producer, ignore_result=True
            )
            ids.append(sent.id)
    return ids


def effect_counts(url: str) -> dict[int, int] | None:
    """Effects per job, or None while PostgreSQL is down."""
    engine = sa.create_engine(url, pool_pre_ping=True)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT job_id, count(*) FROM chaos_effects GROUP BY job_id")
            )
            return {int(job): int(n) for job, n in rows}
    except sa.exc.OperationalError:
        return None
    finally:
        engine.dispose()


class Workers:
    """``plan.workers`` prefork workers, each in its own process group. A killed one is
    replaced in the background: a worker takes seconds to be ready on a loaded machine,
    and the run goes on with its schedule of kills meanwhile (waiting for each
    replacement once left a 13 s window with a single kill)."""

    def __init__(self, env: dict[str, str], plan: Plan, stack: ExitStack) -> None:
        self.env, self.plan, self.stack = env, plan, stack
        self.running: list[WorkerProcess] = []  # ready ones only: a kill's victims
        self.all: list[WorkerProcess] = []
        self.starting: list[threading.Thread] = []
        self.kills = 0

    def start_one(self) -> None:
        worker = self.stack.enter_context(
            celery_worker(APP, self.env, concurrency=self.plan.concurrency, new_session=True)
        )
        self.running.append(worker)
        self.all.append(worker)

    def all_up(self) -> bool:
        return len(self.running) >= self.plan.workers

    def kill_one(self, rng: random.Random, holding: int | None = None) -> bool:
        """SIGKILL a running worker (the one whose process group is ``holding`` when
        given: the limits mode aims at a worker with a body holding its slot, so that
        the run always proves a dead holder's slot frees, else any ready one) and
        start its replacement in the background. False when no worker is ready."""
        if not self.running:
            return False
        aimed = [w for w in self.running if w.proc.pid == holding]
        victim = rng.choice(aimed or self.running)
        self.running.remove(victim)
        victim.kill_group()
        self.kills += 1
        replacement = threading.Thread(target=self.start_one)
        replacement.start()
        self.starting.append(replacement)
        return True

    def settle(self) -> None:
        """Wait for the replacements still starting."""
        for thread in self.starting:
            thread.join()


@contextmanager
def redis_server_of_its_own() -> Iterator[str]:
    server = RedisServer()
    try:
        server.start()
        yield f"{server.url}/0"
    finally:
        server.remove()


@contextmanager
def servers() -> Iterator[tuple[RedisServer, PostgresServer]]:
    redis_server = RedisServer(persistent=True)
    postgres = PostgresServer(durable=True)
    try:
        redis_server.start()
        postgres.start()
        yield redis_server, postgres
    finally:
        redis_server.remove()
        postgres.remove()


def run(plan: Plan) -> Figures:
    rng = random.Random(plan.seed)
    with servers() as (redis_server, postgres), ExitStack() as stack:
        broker = f"{redis_server.url}/0"
        prepare_database(postgres.url)
        env = {
            "CHAOS_MODE": plan.mode,
            "CHAOS_BROKER": broker,
            "CHAOS_STORE": postgres.url,
            "CHAOS_VISIBILITY_TIMEOUT": str(plan.visibility_timeout),
            "CHAOS_JOB_SECONDS": str(plan.job_seconds),
        }
        tally: str | None = None
        if plan.mode == "limits":
            # The witness's Redis: not the broker (restarted by a fault), never faulted.
            tally = stack.enter_context(redis_server_of_its_own())
            env.update(CHAOS_TALLY=tally, CHAOS_LIMIT=str(plan.limit))
        task_ids = publish(broker, plan.jobs)
        started = time.monotonic()
        workers = Workers(env, plan, stack)
        for _ in range(plan.workers):
            workers.start_one()
        events: list[str] = []
        faults = Faults(plan, redis_server, postgres, events)
        faults.start()
        # The kills' window starts with the faults' schedule, once the workers are up: a
        # slow start (a loaded machine) must not eat into it.
        chaos_began = time.monotonic()
        next_kill = time.monotonic() + plan.kill_every
        counts: dict[int, int] = {}
        last_progress, progress = time.monotonic(), -1
        while time.monotonic() - started < plan.deadline:
            now = time.monotonic()
            chaos = now - chaos_began < plan.chaos_for
            if chaos and now >= next_kill and not faults.busy.is_set():
                holder = at_once.a_body_just_started(tally, within=2.0) if tally else None
                if workers.kill_one(rng, holder):
                    # From the kill, not from when it was due: an aimed kill may have waited.
                    next_kill = time.monotonic() + plan.kill_every
            found = effect_counts(postgres.url)
            if found is not None:
                counts = found
                ended = set().union(*dead_letters(postgres.url).values())
                done = len(set(counts) | ended)
                if done != progress:
                    progress, last_progress = done, now
                if done >= plan.jobs and faults.done.is_set():
                    break
                if not chaos and faults.done.is_set() and now - last_progress > quiet(plan):
                    break  # nothing moves any more: what is missing is lost
            time.sleep(0.5)  # the monitor's pace: kills and progress looked at twice a second
        wall = time.monotonic() - started
        # A late duplicate would show within a visibility timeout and a rescue.
        time.sleep(plan.visibility_timeout + 2)
        counts = effect_counts(postgres.url) or counts
        faults.join()
        workers.settle()
        for worker in list(workers.running):
            worker.stop()
        logs = os.environ.get("CHAOS_LOG_DIR")
        if logs:  # every worker's log, for a run that lost something
            for n, worker in enumerate(workers.all):
                (Path(logs) / f"worker-{n}.log").write_text(worker.output)
        letters = dead_letters(postgres.url)
        ended = set(counts) | set().union(*letters.values())
        import redis as redis_client

        held = redis_client.Redis.from_url(broker)
        left = {
            "queued": int(held.llen("celery")),
            "unacked": int(held.hlen("unacked")),
            "unacked_index": int(held.zcard("unacked_index")),
        }
        return Figures(
            mode=plan.mode,
            jobs=plan.jobs,
            lost=plan.jobs - len(set(counts) | set().union(*letters.values())),
            duplicated=sum(n - 1 for n in counts.values() if n > 1),
            in_progress=in_progress_receipts(postgres.url),
            wall_time=wall,
            longest_wait=longest_wait(postgres.url),
            kills=workers.kills,
            events=events,
            dead_letters={outcome: len(jobs) for outcome, jobs in letters.items()},
            missing=sorted(set(range(plan.jobs)) - ended),
            missing_ids=[task_ids[j] for j in sorted(set(range(plan.jobs)) - ended)],
            broker_left=left,
            limit=plan.limit if tally is not None else None,
            counted=at_once.read(tally) if tally is not None else None,
        )


class Faults(threading.Thread):
    """Redis restarted once, PostgreSQL crashed and down for a while once."""

    def __init__(
        self, plan: Plan, redis_server: RedisServer, postgres: PostgresServer, events: list[str]
    ) -> None:
        super().__init__(daemon=True)
        self.plan, self.redis_server, self.postgres, self.events = (
            plan,
            redis_server,
            postgres,
            events,
        )
        self.busy = threading.Event()  # no worker kill while a server restarts
        self.done = threading.Event()

    def run(self) -> None:
        began = time.monotonic()
        planned = [
            (self.plan.redis_restart_at, self.restart_redis),
            (self.plan.postgres_crash_at, self.crash_postgres),
        ]
        schedule = sorted(((at, f) for at, f in planned if at is not None), key=lambda x: x[0])
        for at, fault in schedule:
            time.sleep(max(0.0, began + at - time.monotonic()))  # the fault's planned moment
            self.busy.set()
            try:
                fault()
            finally:
                self.busy.clear()
        self.done.set()

    def restart_redis(self) -> None:
        self.redis_server.stop()
        time.sleep(1.0)  # the outage: Redis stays down a second
        self.redis_server.start()
        self.events.append("Redis restarted")

    def crash_postgres(self) -> None:
        self.postgres.stop("immediate")
        time.sleep(self.plan.postgres_down_for)  # the outage the plan asks for
        self.postgres.start()
        self.events.append(f"PostgreSQL crashed and down {self.plan.postgres_down_for:g} s")


def quiet(plan: Plan) -> float:
    """Seconds without progress after which a job still missing is lost: a lease
    (hard limit 10 s + 5 s), a visibility timeout and a rescue, and some margin."""
    return 15.0 + plan.visibility_timeout + 10.0


def dead_letters(url: str) -> dict[str, set[int]]:
    """The jobs that ended in a dead letter, by outcome."""
    import json

    engine = sa.create_engine(url)
    found: dict[str, set[int]] = {}
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT outcome, args FROM reliable_dead_letters WHERE task_name = 'chaos.job'"
                )
            )
            for outcome, args in rows:
                found.setdefault(str(outcome), set()).add(int(json.loads(args)[0]))
    except sa.exc.SQLAlchemyError:
        return {}
    finally:
        engine.dispose()
    return found


def in_progress_receipts(url: str) -> int:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sa.text("SELECT count(*) FROM reliable_receipts WHERE state = 'in_progress'")
                ).scalar_one()
            )
    finally:
        engine.dispose()


def longest_wait(url: str) -> float:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            value = connection.execute(
                sa.text(
                    "SELECT max(first_done - published_at) FROM (SELECT job_id, "
                    "min(done_at) AS first_done, min(published_at) AS published_at "
                    "FROM chaos_effects GROUP BY job_id) AS firsts"
                )
            ).scalar_one()
            return float(value or 0.0)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--kill-every", type=float, default=3.0)
    parser.add_argument(
        "--mode",
        choices=["atomic", "plain", "limits", "outbox", "batches", "both", "all"],
        default="both",
    )
    parser.add_argument("--limit", type=int, default=3, help="limits mode: concurrency(n)")
    args = parser.parse_args(argv)
    modes = {
        "both": ["atomic", "plain"],
        "all": ["atomic", "plain", "limits", "outbox", "batches"],
    }.get(args.mode, [args.mode])
    failed = False
    for mode in modes:
        plan = Plan(
            jobs=args.jobs,
            workers=args.workers,
            kill_every=args.kill_every,
            mode=mode,
            limit=args.limit,
        )
        if mode == "outbox":
            from tests.chaos.outbox import run_outbox

            outbox = run_outbox(plan)
            print("\n".join(outbox.lines()), flush=True)
            print(f"  figures: {asdict(outbox)}", file=sys.stderr)
            for broken in outbox.broken():
                print(f"  BROKEN: {broken}", flush=True)
                failed = True
            continue
        if mode == "batches":
            from tests.chaos.batches import run_batches

            batches = run_batches(plan)
            print("\n".join(batches.lines()), flush=True)
            print(f"  figures: {asdict(batches)}", file=sys.stderr)
            for broken in batches.broken():
                print(f"  BROKEN: {broken}", flush=True)
                failed = True
            continue
        figures = run(plan)
        print("\n".join(figures.lines()), flush=True)
        print(f"  figures: {asdict(figures)}", file=sys.stderr)
        # Every mode must lose nothing (delivery); only atomic() promises no duplicate.
        exactly_once = mode in ("atomic", "limits")
        if figures.lost or figures.in_progress or (exactly_once and figures.duplicated):
            failed = True
        broken = figures.limit_broken()
        if broken:
            print(f"  LIMIT BROKEN: {broken}", flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
