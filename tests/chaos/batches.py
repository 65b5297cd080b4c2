"""The chaos suite's ``batches`` mode: publisher processes open batches of 20 to 50 jobs
(``tests/chaos/batch_publisher.py``; a quarter of each batch written with
``publish_in`` in a committed transaction), prefork workers run them, while workers
and publishers are SIGKILLed and restarted (and, in the full run, Redis restarts and
PostgreSQL crashes, as in ``atomic``).

The jobs are the ``atomic`` mode's (an ``idempotency_key``, the effect through
``self.atomic()``), and some are made to end DISCARDED or FAILED by their id
(``kind_of``). Each batch's ``on_complete`` writes the summary it got through
``self.atomic()`` (``chaos.batch_done``, ``tests/chaos/app.py``).

Figures, from PostgreSQL and the publishers' output (each publish printed with its
batch id, job and task id):

* jobs lost (no effect, or no dead letter of the outcome it was made to end with) and
  effects duplicated, as the other modes;
* every batch number sealed (its publisher got to the end of it at least once);
* every sealed batch completed, its callback's row written exactly once;
* each sealed batch's members are the ones its publisher printed, and each ended as
  it really did: a job made to be discarded ``discarded``, one made to fail
  ``failed``; a member whose task id wrote the job's effect ``succeeded`` (or
  ``duplicate``: killed after its commit and before its end was counted, its rerun
  found the job done), one whose job's effect another task id wrote ``duplicate``;
* the summary its callback got has those counts, the total and the failed task ids.

A batch whose publisher was killed inside its block stays open (its members run and
are counted, it never completes): counted, not a failure. So is one abandoned (its
block raised: a publish or the seal met a server fault).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis
import sqlalchemy as sa

from tests.chaos.batch_publisher import kind_of, members_of
from tests.chaos.outbox import Child
from tests.chaos.run import (
    Faults,
    Plan,
    Workers,
    dead_letters,
    in_progress_receipts,
    longest_wait,
    prepare_database,
    quiet,
    servers,
)
from tests.support.waiting import wait_until

ENDINGS = ("succeeded", "duplicate", "cancelled", "discarded", "exhausted", "failed")
#: What each kind of job must leave: its effect, or a dead letter of that outcome.
LETTER_OF = {"discard": "discarded", "fail": "failed"}


@dataclass
class BatchFigures:
    batches: int
    jobs: int
    lost: int
    duplicated: int
    in_progress: int
    outbox_left: int
    #: Batch numbers no block of which was ever sealed.
    never_sealed: int
    #: Batches (rows) sealed, and of them completed.
    sealed: int
    completed: int
    #: Left open (their publisher killed inside the block) or abandoned (the block
    #: raised): never sealed, so never completed; their members ran all the same.
    left_open: int
    abandoned: int
    #: Completed batches whose callback wrote no row, or more than one.
    callbacks_missing: int
    callbacks_twice: int
    #: Sealed batches whose members, their endings or the summary were not right (why).
    wrong: list[str]
    #: Members of the sealed batches, by their counted ending.
    outcomes: dict[str, int]
    publisher_kills: int
    #: Of which aimed right after a publish inside a block (its batch then stays open).
    publisher_kills_in_block: int
    worker_kills: int
    wall_time: float
    longest_wait: float
    #: Last member's end to the callback's row, median and longest (s).
    callback_lag: tuple[float, float]
    mode: str = "batches"
    events: list[str] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)

    def broken(self) -> list[str]:
        promises = [
            (self.lost, "jobs lost"),
            (self.duplicated, "effects duplicated"),
            (self.in_progress, "receipts left in progress"),
            (self.outbox_left, "outbox rows left"),
            (self.never_sealed, "batch numbers never sealed"),
            (self.sealed - self.completed, "sealed batches never completed"),
            (self.callbacks_missing, "completed batches without their callback"),
            (self.callbacks_twice, "batches whose callback ran twice or more"),
            (len(self.wrong), "sealed batches with wrong members, endings or summary"),
        ]
        return [f"{n} {what}" for n, what in promises if n] + self.wrong[:10]

    def lines(self) -> list[str]:
        return [
            f"chaos ({self.mode}): {self.batches} batches, {self.jobs} jobs, "
            f"{self.publisher_kills} publisher kills ({self.publisher_kills_in_block} inside "
            f"a block), {self.worker_kills} worker kills"
            + (f", {', '.join(self.events)}" if self.events else ""),
            f"  jobs lost:                  {self.lost}",
            f"  effects duplicated:         {self.duplicated}",
            f"  batches sealed:             {self.sealed} (completed {self.completed})",
            f"  left open, abandoned:       {self.left_open}, {self.abandoned}",
            f"  callbacks missing, twice:   {self.callbacks_missing}, {self.callbacks_twice}",
            f"  batches wrong:              {len(self.wrong)}",
            f"  members' endings counted:   {self.outcomes}",
            f"  outbox rows left:           {self.outbox_left}",
            f"  dead letters:               {self.dead_letters or 0}",
            f"  receipts left in progress:  {self.in_progress}",
            f"  last end to callback:       {self.callback_lag[0]:.2f} s median, "
            f"{self.callback_lag[1]:.2f} s longest",
            f"  wall time:                  {self.wall_time:.1f} s",
            f"  longest from the start to an effect: {self.longest_wait:.1f} s",
            *([f"  lost: {self.missing[:20]}"] if self.lost else []),
            *(f"  WRONG: {w}" for w in self.wrong[:10]),
        ]


class BatchPublisher(Child):
    def __init__(self, index: int, plan: Plan, env: dict[str, str], batches: int) -> None:
        self.index = index
        self.kill_in_block = threading.Event()
        #: The batch it was killed in, when the kill was aimed inside a block.
        self.killed_in: str | None = None
        super().__init__(
            [
                sys.executable,
                "-m",
                "tests.chaos.batch_publisher",
                str(index),
                str(plan.publishers),
                str(batches),
                f"{batch_pause(plan, batches):.4f}",
                str(plan.seed),
            ],
            env,
        )

    def on_line(self, line: str) -> None:
        if line.startswith("member ") and self.kill_in_block.is_set():
            # At once, in the reader: the publisher is in its pause inside the block.
            self.killed_in = line.split()[1]
            self.kill_in_block.clear()
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


def batches_for(plan: Plan) -> int:
    """As many batches as take ``plan.jobs`` jobs (35 on average each)."""
    return max(1, round(plan.jobs / ((20 + 50) / 2)))


def batch_pause(plan: Plan, batches: int) -> float:
    """Seconds between two publishes of a publisher, so that they take about
    ``plan.publish_for`` seconds in all."""
    members = sum(len(members_of(b, plan.seed)) for b in range(batches))
    return plan.publish_for * plan.publishers / max(members, 1)


class Publishers:
    def __init__(self, plan: Plan, env: dict[str, str], batches: int) -> None:
        self.plan, self.env, self.batches = plan, env, batches
        self.current: dict[int, BatchPublisher] = {}
        self.all: list[BatchPublisher] = []
        self.kills = 0
        self.kills_in_block = 0
        self.unexpected: list[int] = []

    def start(self, index: int) -> None:
        publisher = BatchPublisher(index, self.plan, self.env, self.batches)
        self.current[index] = publisher
        self.all.append(publisher)

    def finished(self) -> bool:
        return all(p.proc.poll() == 0 for p in self.current.values())

    def kill_one(self, rng: random.Random, in_block: bool) -> None:
        """SIGKILL a running publisher (right after its next publish inside a block, or
        at once) and start it again."""
        alive = [p for p in self.current.values() if p.proc.poll() is None]
        if not alive:
            return
        victim = rng.choice(alive)
        if in_block:
            victim.kill_in_block.set()
            try:
                victim.proc.wait(15)  # it publishes every PAUSE seconds, once started
            except subprocess.TimeoutExpired:
                victim.kill_in_block.clear()
        if victim.kill():
            self.kills += 1
            self.kills_in_block += victim.killed_in is not None
            self.start(victim.index)

    def restart_dead(self) -> None:
        for index, publisher in list(self.current.items()):
            code = publisher.proc.poll()
            if code not in (None, 0):
                self.unexpected.append(code)
                self.start(index)

    def stop(self) -> None:
        for publisher in self.current.values():
            publisher.stop()

    def printed(self) -> dict[str, list[tuple[int, str]]]:
        """Batch id -> (job, task id) of each member its publisher printed."""
        found: dict[str, list[tuple[int, str]]] = {}
        for publisher in self.all:
            for line in list(publisher.lines):
                parts = line.split()
                if len(parts) == 4 and parts[0] == "member":
                    found.setdefault(parts[1], []).append((int(parts[2]), parts[3]))
        return found


@dataclass
class State:
    #: Batch rows: id -> (description, state).
    batches: dict[str, tuple[str, str]]
    #: Callback rows per batch id.
    callbacks: dict[str, int]
    outbox_rows: int


def state_of(url: str) -> State | None:
    """What PostgreSQL holds, or None while it is down."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            batches = {
                str(i): (str(d), str(s))
                for i, d, s in connection.execute(
                    sa.text("SELECT id, description, state FROM reliable_batches")
                )
            }
            callbacks = {
                str(b): int(n)
                for b, n in connection.execute(
                    sa.text("SELECT batch_id, count(*) FROM chaos_batch_callbacks GROUP BY 1")
                )
            }
            rows = connection.execute(sa.text("SELECT count(*) FROM reliable_outbox")).scalar_one()
            return State(batches, callbacks, int(rows))
    except sa.exc.OperationalError:
        return None
    finally:
        engine.dispose()


def settled(state: State, batches: int) -> bool:
    """Every batch number sealed, every sealed batch completed with its callback's
    row, the outbox empty."""
    sealed = {d for d, s in state.batches.values() if s in ("sealed", "completed")}
    done = all(f"chaos batch {b}" in sealed for b in range(batches))
    return (
        done
        and not any(s == "sealed" for _, s in state.batches.values())
        and all(
            state.callbacks.get(i, 0) >= 1
            for i, (_, s) in state.batches.items()
            if s == "completed"
        )
        and state.outbox_rows == 0
    )


def run_batches(plan: Plan) -> BatchFigures:
    rng = random.Random(plan.seed)
    batches = batches_for(plan)
    with servers() as (redis_server, postgres), ExitStack() as stack:
        broker = f"{redis_server.url}/0"
        prepare_database(postgres.url)
        env = {
            "CHAOS_MODE": "batches",
            "CHAOS_BROKER": broker,
            "CHAOS_STORE": postgres.url,
            "CHAOS_VISIBILITY_TIMEOUT": str(plan.visibility_timeout),
            "CHAOS_JOB_SECONDS": str(plan.job_seconds),
            # A job published again (its first batch left open or abandoned) must carry
            # the same arguments, or its idempotency key would conflict: its
            # "published_at" is the run's start, for every job.
            "CHAOS_STARTED": str(time.time()),
        }
        publishers = Publishers(plan, env, batches)
        stack.callback(publishers.stop)
        workers = Workers(env, plan, stack)
        starting = [threading.Thread(target=workers.start_one) for _ in range(plan.workers)]
        for thread in starting:  # side by side
            thread.start()
        for thread in starting:
            thread.join()
        if len(workers.running) < plan.workers:
            raise RuntimeError("a chaos worker did not start (its error is above)")
        # The chaos's clock: the workers are up, the publishers start.
        started = time.monotonic()
        for index in range(plan.publishers):
            publishers.start(index)
        events: list[str] = []
        faults = Faults(plan, redis_server, postgres, events)
        faults.start()
        next_worker_kill = started + plan.kill_every
        next_publisher_kill = started + plan.publisher_kill_every / 2
        aim_in_block = True
        state: State | None = None
        last_progress, progress = time.monotonic(), None
        while time.monotonic() - started < plan.deadline:
            publishers.restart_dead()
            now = time.monotonic()
            chaos = now - started < plan.chaos_for
            if chaos and not faults.busy.is_set():
                if now >= next_publisher_kill:
                    publishers.kill_one(rng, in_block=aim_in_block)
                    aim_in_block = not aim_in_block
                    next_publisher_kill = time.monotonic() + plan.publisher_kill_every
                if now >= next_worker_kill and workers.all_up():
                    workers.kill_one(rng)
                    next_worker_kill = time.monotonic() + plan.kill_every
            found = state_of(postgres.url)
            if found is not None:
                state = found
                moved = (sorted(state.batches.values()), state.callbacks, state.outbox_rows)
                if moved != progress:
                    progress, last_progress = moved, now
                if publishers.finished() and faults.done.is_set() and settled(state, batches):
                    break
                if not chaos and publishers.finished() and now - last_progress > quiet(plan):
                    break  # nothing moves any more: what is missing is lost
            time.sleep(0.25)  # the monitor's pace
        wall = time.monotonic() - started
        faults.join()
        workers.settle()
        # Nothing can run again once no message is queued or unacknowledged (a killed
        # worker's are rescued into the queue) and the outbox is empty: the later event
        # after which a duplicate could no longer show.
        client = redis.Redis.from_url(broker)
        wait_until(
            lambda: (
                client.llen("celery") == 0
                and client.hlen("unacked") == 0
                and (state_of(postgres.url) or State({}, {}, 1)).outbox_rows == 0
            ),
            "the broker's queue, its unacknowledged messages and the outbox empty",
            timeout=max(60.0, 3 * quiet(plan)),
        )
        client.close()
        state = state_of(postgres.url) or state
        assert state is not None, "PostgreSQL never answered"
        publishers.stop()
        for worker in list(workers.running):
            worker.stop()
        logs = os.environ.get("CHAOS_LOG_DIR")
        if logs:  # every process's log, for a run that broke a promise
            for n, worker in enumerate(workers.all):
                (Path(logs) / f"batches-worker-{n}.log").write_text(worker.output)
            for n, publisher in enumerate(publishers.all):
                (Path(logs) / f"batches-publisher-{n}.log").write_text(publisher.output)
        return _figures(plan, batches, postgres.url, state, publishers, workers, wall, events)


def _figures(  # noqa: PLR0917 - the run's parts, read once
    plan: Plan,
    batches: int,
    url: str,
    state: State,
    publishers: Publishers,
    workers: Workers,
    wall: float,
    events: list[str],
) -> BatchFigures:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            effect_by: dict[int, list[str]] = {}
            for job, task in connection.execute(
                sa.text("SELECT job_id, task_id FROM chaos_effects")
            ):
                effect_by.setdefault(int(job), []).append(str(task))
            members: dict[str, dict[str, str | None]] = {}
            for batch_id, task_id, outcome in connection.execute(
                sa.text("SELECT batch_id, task_id, outcome FROM reliable_batch_members")
            ):
                members.setdefault(str(batch_id), {})[str(task_id)] = outcome
            rows = {
                str(r.id): r
                for r in connection.execute(
                    sa.text(
                        "SELECT id, description, state, total, completed_at FROM reliable_batches"
                    )
                )
            }
            summaries: dict[str, list[tuple[dict[str, object], float]]] = {}
            for batch_id, summary, done_at in connection.execute(
                sa.text("SELECT batch_id, summary, done_at FROM chaos_batch_callbacks")
            ):
                summaries.setdefault(str(batch_id), []).append((json.loads(summary), done_at))
            ended_last = {
                str(b): t
                for b, t in connection.execute(
                    sa.text(
                        "SELECT batch_id, extract(epoch FROM max(ended_at)) "
                        "FROM reliable_batch_members GROUP BY 1"
                    )
                )
            }
    finally:
        engine.dispose()
    letters = dead_letters(url)
    expected_jobs = {j for b in range(batches) for j in members_of(b, plan.seed)}
    missing = sorted(
        j
        for j in expected_jobs
        if (
            j not in effect_by
            if kind_of(j) == "effect"
            else j not in letters.get(LETTER_OF[kind_of(j)], set())
        )
    )
    printed = publishers.printed()
    sealed_rows = {i: r for i, r in rows.items() if r.state in ("sealed", "completed")}
    sealed_numbers = {int(r.description.split()[-1]) for r in sealed_rows.values()}
    wrong: list[str] = []
    counted: Counter[str] = Counter()
    lags: list[float] = []
    for batch_id, row in sealed_rows.items():
        wrong.extend(
            _check_batch(
                batch_id,
                row,
                printed.get(batch_id, []),
                members.get(batch_id, {}),
                effect_by,
                summaries.get(batch_id, []),
                counted,
            )
        )
        if summaries.get(batch_id) and batch_id in ended_last:
            lags.append(summaries[batch_id][0][1] - float(ended_last[batch_id]))
    lags.sort()
    return BatchFigures(
        batches=batches,
        jobs=len(expected_jobs),
        lost=len(missing),
        duplicated=sum(len(t) - 1 for t in effect_by.values() if len(t) > 1),
        in_progress=in_progress_receipts(url),
        outbox_left=state.outbox_rows,
        never_sealed=batches - len(sealed_numbers & set(range(batches))),
        sealed=len(sealed_rows),
        completed=sum(1 for r in sealed_rows.values() if r.state == "completed"),
        left_open=sum(1 for r in rows.values() if r.state == "open"),
        abandoned=sum(1 for r in rows.values() if r.state == "abandoned"),
        callbacks_missing=sum(
            1 for i, r in sealed_rows.items() if r.state == "completed" and not summaries.get(i)
        ),
        callbacks_twice=sum(1 for s in summaries.values() if len(s) > 1),
        wrong=wrong,
        outcomes={o: counted[o] for o in ENDINGS},
        publisher_kills=publishers.kills,
        publisher_kills_in_block=publishers.kills_in_block,
        worker_kills=workers.kills,
        wall_time=wall,
        longest_wait=longest_wait(url),
        callback_lag=(lags[len(lags) // 2], lags[-1]) if lags else (0.0, 0.0),
        events=events,
        dead_letters={outcome: len(jobs) for outcome, jobs in letters.items()},
        missing=missing,
    )


def _check_batch(  # noqa: PLR0917
    batch_id: str,
    row: sa.Row[tuple[object, ...]],
    printed: list[tuple[int, str]],
    stored: dict[str, str | None],
    effect_by: dict[int, list[str]],
    summaries: list[tuple[dict[str, object], float]],
    counted: Counter[str],
) -> list[str]:
    """What is wrong with a sealed batch: its members (the printed ones), each one's
    ending against what really happened, its summary against the endings."""
    name = f"{row.description} ({batch_id})"
    job_of = {task: job for job, task in printed}
    if set(stored) != set(job_of) or row.total != len(job_of):
        return [f"{name}: members {len(stored)} stored, {len(job_of)} printed, total {row.total}"]
    problems = []
    failed = set()
    endings: Counter[str] = Counter()
    for task_id, outcome in stored.items():
        job = job_of[task_id]
        kind = kind_of(job)
        if kind == "effect":
            wrote = task_id in effect_by.get(job, [])
            right = ("succeeded", "duplicate") if wrote else ("duplicate",)
        else:
            right = ("discarded",) if kind == "discard" else ("failed",)
            failed.add(task_id)
        if outcome not in right:
            problems.append(f"{name}: member {task_id} (job {job}, {kind}) ended {outcome}")
        if outcome is not None:
            endings[outcome] += 1
            counted[outcome] += 1
    if not summaries:
        return problems  # counted apart: a completed batch without its callback
    summary = summaries[0][0]
    if summary.get("outcomes") != {o: endings[o] for o in ENDINGS}:
        problems.append(f"{name}: summary {summary.get('outcomes')} != endings {dict(endings)}")
    if summary.get("total") != len(job_of) or set(summary.get("failed") or ()) != failed:
        problems.append(f"{name}: summary total {summary.get('total')} or its failed ids wrong")
    return problems
