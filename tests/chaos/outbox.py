"""The chaos suite's ``outbox`` mode: jobs written with ``publish_in`` by publisher
processes, relayed by the workers' relay threads and ``celery reliable relay``, run on
prefork workers, while publishers, relays and workers are SIGKILLed and restarted
(and, in the full run, Redis restarts and PostgreSQL crashes, as in ``atomic``).

* Publishers (``tests/chaos/publisher.py``): ``Plan.publishers`` processes, each job a
  transaction of its own that writes the outbox row and the application's row
  (``chaos_jobs``); ``Plan.rollback_share`` of them rolled back on purpose. One is
  SIGKILLed every ``Plan.publisher_kill_every`` seconds, every other time right after
  a commit it printed (it then pauses before its next transaction: the kill lands
  between the commit and anything else), else at once; it starts again at once.
* Relays: each worker's relay thread, and ``Plan.relays`` ``celery reliable relay``
  processes. Every ``Plan.relay_kill_every`` seconds one is SIGKILLed: every other
  time aimed between its publish and its delete (``tests/chaos/relay_witness.py``:
  the relay that publishes next waits there; a worker's relay is killed with its
  worker), else a ``celery reliable relay`` at once.
* Workers: one SIGKILLed (process group) every ``Plan.kill_every`` seconds.

Figures, from PostgreSQL and the witness's Redis (no fault touches it): jobs committed
(their ``chaos_jobs`` row is there) and rolled back; lost (committed, no effect);
effects duplicated (one job's effect written twice through ``self.atomic()``); ran but
never committed (an effect whose task id no committed row has); outbox rows left at
the end; task ids the relays published twice, and how their second copies ended.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from tests.chaos import relay_witness
from tests.chaos.publisher import rolls_back
from tests.chaos.run import (
    APP,
    Faults,
    Plan,
    Workers,
    dead_letters,
    in_progress_receipts,
    longest_wait,
    prepare_database,
    quiet,
    redis_server_of_its_own,
    servers,
)
from tests.support.workers import ROOT


@dataclass
class OutboxFigures:
    jobs: int
    committed: int
    rolled_back: int
    #: Jobs neither committed nor rolled back: a publisher never got to them.
    undecided: int
    lost: int
    duplicated: int
    #: Effects of a job whose transaction never committed (rolled back, or cut by a kill).
    ran_uncommitted: int
    outbox_left: int
    in_progress: int
    publisher_kills: int
    #: Of which right after a commit the publisher printed.
    publisher_kills_after_commit: int
    #: ``celery reliable relay`` processes killed at a random moment.
    relay_kills: int
    #: Relays (a worker's, or ``celery reliable relay``) killed between a publish and
    #: its delete, and the aims no relay took (no row was waiting).
    relay_kills_between: int
    #: Of which a worker's relay thread (its worker killed: counted in ``worker_kills``).
    relay_kills_in_workers: int
    relay_aims_missed: int
    worker_kills: int
    #: Task ids the relays published twice, and how their executions ended.
    seen: relay_witness.Seen
    #: The task ids published right before an aimed kill, and those published again.
    held: list[str]
    held_published_again: int
    wall_time: float
    longest_wait: float
    mode: str = "outbox"
    events: list[str] = field(default_factory=list)
    dead_letters: dict[str, int] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)

    def broken(self) -> list[str]:
        """What the run failed to keep."""
        promises = [
            (self.lost, "jobs lost"),
            (self.duplicated, "effects duplicated"),
            (self.ran_uncommitted, "jobs ran that never committed"),
            (self.outbox_left, "outbox rows left"),
            (self.in_progress, "receipts left in progress"),
            (self.undecided, "jobs never committed nor rolled back"),
            (len(self.held) - self.held_published_again, "held rows not published again"),
        ]
        return [f"{n} {what}" for n, what in promises if n]

    def lines(self) -> list[str]:
        seen = self.seen
        return [
            f"chaos ({self.mode}): {self.jobs} jobs, {self.publisher_kills} publisher kills, "
            f"{self.relay_kills + self.relay_kills_between} relay kills, "
            f"{self.worker_kills} worker kills"
            + (f", {', '.join(self.events)}" if self.events else ""),
            f"  jobs committed:             {self.committed}",
            f"  jobs rolled back:           {self.rolled_back}",
            f"  jobs lost:                  {self.lost}",
            f"  effects duplicated:         {self.duplicated}",
            f"  ran, never committed:       {self.ran_uncommitted}",
            f"  outbox rows left:           {self.outbox_left}",
            f"  dead letters:               {self.dead_letters or 0}",
            f"  receipts left in progress:  {self.in_progress}",
            f"  publisher kills:            {self.publisher_kills} "
            f"({self.publisher_kills_after_commit} right after a commit)",
            f"  relay kills:                {self.relay_kills_between} between publish and "
            f"delete ({self.relay_kills_in_workers} in a worker, {self.relay_aims_missed} "
            f"aims missed), {self.relay_kills} at random",
            f"  relay publishes:            {seen.publishes} ({seen.published_twice} task ids "
            f"published twice or more, {seen.extra_publishes} extra publishes)",
            f"  held rows published again:  {self.held_published_again} of {len(self.held)}",
            f"  executions by outcome:      {seen.outcomes}",
            f"  wall time:                  {self.wall_time:.1f} s",
            f"  longest wait for an effect: {self.longest_wait:.1f} s",
            *([f"  lost: {self.missing[:20]}"] if self.lost else []),
        ]


class Child:
    """A child process in a process group of its own, its output kept line by line."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.on_line(line.rstrip("\n"))
            self.lines.append(line.rstrip("\n"))

    def on_line(self, line: str) -> None:
        return None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> bool:
        """SIGKILL its process group; False when it had already ended."""
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return self.proc.returncode == -signal.SIGKILL

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reader.join(5)


class Publisher(Child):
    def __init__(self, index: int, plan: Plan, env: dict[str, str]) -> None:
        pause = plan.publish_for * plan.publishers / max(plan.jobs, 1)
        self.index = index
        self.kill_at_commit = threading.Event()
        #: The job whose commit it printed last before the kill aimed there.
        self.killed_after: int | None = None
        super().__init__(
            [
                sys.executable,
                "-m",
                "tests.chaos.publisher",
                str(index),
                str(plan.publishers),
                str(plan.jobs),
                f"{pause:.4f}",
                str(plan.rollback_share),
                str(plan.seed),
            ],
            env,
        )

    def on_line(self, line: str) -> None:
        if line.startswith("committed ") and self.kill_at_commit.is_set():
            # At once, in the reader: the publisher is in its pause after the commit.
            self.killed_after = int(line.split()[1])
            self.kill_at_commit.clear()
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class Publishers:
    def __init__(self, plan: Plan, env: dict[str, str]) -> None:
        self.plan, self.env = plan, env
        self.current: dict[int, Publisher] = {}
        self.all: list[Publisher] = []
        self.kills = 0
        self.kills_after_commit = 0
        self.unexpected: list[int] = []

    def start(self, index: int) -> None:
        publisher = Publisher(index, self.plan, self.env)
        self.current[index] = publisher
        self.all.append(publisher)

    def alive(self) -> list[Publisher]:
        return [p for p in self.current.values() if p.proc.poll() is None]

    def finished(self) -> bool:
        return all(p.proc.poll() == 0 for p in self.current.values())

    def kill_one(self, rng: random.Random, after_commit: bool) -> None:
        """SIGKILL a running publisher (right after its next commit, or at once) and
        start it again."""
        alive = self.alive()
        if not alive:
            return
        victim = rng.choice(alive)
        if after_commit:
            victim.kill_at_commit.set()
            try:
                # It commits every PAUSE seconds, once started (an import of seconds).
                victim.proc.wait(15)
            except subprocess.TimeoutExpired:
                victim.kill_at_commit.clear()
        killed = victim.kill()
        if killed:
            self.kills += 1
            if after_commit and victim.killed_after is not None:
                self.kills_after_commit += 1
            self.start(victim.index)

    def restart_dead(self) -> None:
        """A publisher that died of something else than the run's kill starts again."""
        for index, publisher in list(self.current.items()):
            code = publisher.proc.poll()
            if code not in (None, 0):
                self.unexpected.append(code)
                self.start(index)

    def stop(self) -> None:
        for publisher in self.current.values():
            publisher.stop()


class Relays:
    """``plan.relays`` ``celery reliable relay`` processes."""

    def __init__(self, plan: Plan, env: dict[str, str]) -> None:
        self.env = env
        self.running: list[Child] = []
        self.all: list[Child] = []
        for _ in range(plan.relays):
            self.start_one()

    def start_one(self) -> None:
        relay = Child([sys.executable, "-m", "celery", "-A", APP, "reliable", "relay"], self.env)
        self.running.append(relay)
        self.all.append(relay)

    def kill(self, relay: Child) -> None:
        self.running.remove(relay)
        relay.kill()
        self.start_one()

    def of_group(self, pgid: int) -> Child | None:
        return next((r for r in self.running if r.proc.pid == pgid), None)

    def stop(self) -> None:
        for relay in self.running:
            relay.stop()


@dataclass
class State:
    #: Committed jobs: job id -> task id.
    committed: dict[int, str]
    #: Every effect written: (job id, task id).
    effects: list[tuple[int, str]]
    outbox_rows: int


def state_of(url: str) -> State | None:
    """What PostgreSQL holds, or None while it is down."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            committed = {
                int(job): str(task)
                for job, task in connection.execute(
                    sa.text("SELECT job_id, task_id FROM chaos_jobs")
                )
            }
            effects = [
                (int(job), str(task))
                for job, task in connection.execute(
                    sa.text("SELECT job_id, task_id FROM chaos_effects")
                )
            ]
            rows = connection.execute(sa.text("SELECT count(*) FROM reliable_outbox")).scalar_one()
            return State(committed, effects, int(rows))
    except sa.exc.OperationalError:
        return None
    finally:
        engine.dispose()


class RelayKills:
    """Relays SIGKILLed: aimed between a publish and its delete, or at random."""

    def __init__(self, witness: str, relays: Relays, workers: Workers) -> None:
        self.witness, self.relays, self.workers = witness, relays, workers
        self.between = 0
        self.in_workers = 0
        self.missed = 0
        self.at_random = 0
        self.held: list[str] = []

    def aimed(self, rng: random.Random) -> None:
        found = relay_witness.aim(self.witness, within=5.0)
        if found is None:
            self.missed += 1
            return
        pgid, task_id = found
        relay = self.relays.of_group(pgid)
        if relay is not None:
            self.relays.kill(relay)
        elif any(w.proc.pid == pgid for w in self.workers.running):
            self.workers.kill_one(rng, holding=pgid)  # its relay thread held the row
            self.in_workers += 1
        else:
            self.missed += 1  # not a process of this run's: cannot be
            return
        self.between += 1
        self.held.append(task_id)

    def random(self, rng: random.Random) -> None:
        if self.relays.running:
            self.relays.kill(rng.choice(self.relays.running))
            self.at_random += 1


def run_outbox(plan: Plan) -> OutboxFigures:
    rng = random.Random(plan.seed)
    with servers() as (redis_server, postgres), ExitStack() as stack:
        broker = f"{redis_server.url}/0"
        prepare_database(postgres.url)
        witness = stack.enter_context(redis_server_of_its_own())
        env = {
            "CHAOS_MODE": "outbox",
            "CHAOS_BROKER": broker,
            "CHAOS_STORE": postgres.url,
            "CHAOS_VISIBILITY_TIMEOUT": str(plan.visibility_timeout),
            "CHAOS_JOB_SECONDS": str(plan.job_seconds),
            "CHAOS_WITNESS": witness,
        }
        relays = Relays(plan, env)
        stack.callback(relays.stop)
        publishers = Publishers(plan, env)
        stack.callback(publishers.stop)
        workers = Workers(env, plan, stack)
        starting = [threading.Thread(target=workers.start_one) for _ in range(plan.workers)]
        for thread in starting:  # side by side
            thread.start()
        for thread in starting:
            thread.join()
        if len(workers.running) < plan.workers:
            raise RuntimeError("a chaos worker did not start (its error is above)")
        # The chaos's clock: the workers are up, the publishers start writing (so that
        # however slow the machine, the kills come while they write).
        started = time.monotonic()
        for index in range(plan.publishers):
            publishers.start(index)
        events: list[str] = []
        faults = Faults(plan, redis_server, postgres, events)
        faults.start()
        relay_kills = RelayKills(witness, relays, workers)
        next_worker_kill = started + plan.kill_every
        next_publisher_kill = started + plan.publisher_kill_every / 2
        next_relay_kill = started + plan.relay_kill_every / 2
        publisher_aim, relay_aim = True, True
        state: State | None = None
        last_progress, progress = time.monotonic(), -1
        while time.monotonic() - started < plan.deadline:
            publishers.restart_dead()
            now = time.monotonic()
            chaos = now - started < plan.chaos_for
            if chaos and not faults.busy.is_set():
                if now >= next_relay_kill:
                    if relay_aim:
                        relay_kills.aimed(rng)
                    else:
                        relay_kills.random(rng)
                    relay_aim = not relay_aim
                    next_relay_kill = time.monotonic() + plan.relay_kill_every
                if now >= next_publisher_kill:
                    publishers.kill_one(rng, after_commit=publisher_aim)
                    publisher_aim = not publisher_aim
                    next_publisher_kill = time.monotonic() + plan.publisher_kill_every
                if now >= next_worker_kill and workers.all_up():
                    workers.kill_one(rng)
                    next_worker_kill = time.monotonic() + plan.kill_every
            found = state_of(postgres.url)
            if found is not None:
                state = found
                done = {job for job, _ in state.effects}
                moved = len(done) + len(state.committed)
                if moved != progress:
                    progress, last_progress = moved, now
                settled = publishers.finished() and faults.done.is_set()
                if settled and set(state.committed) <= done and state.outbox_rows == 0:
                    break
                if not chaos and settled and now - last_progress > quiet(plan):
                    break  # nothing moves any more: what is missing is lost
            time.sleep(0.25)  # the monitor's pace
        wall = time.monotonic() - started
        # A late duplicate would show within a visibility timeout and a rescue.
        time.sleep(plan.visibility_timeout + 2)
        state = state_of(postgres.url) or state
        assert state is not None, "PostgreSQL never answered"
        faults.join()
        workers.settle()
        relays.stop()
        publishers.stop()
        for worker in list(workers.running):
            worker.stop()
        logs = os.environ.get("CHAOS_LOG_DIR")
        if logs:  # every process's log, for a run that broke a promise
            outputs = {
                "worker": [w.output for w in workers.all],
                "relay": [r.output for r in relays.all],
                "publisher": [p.output for p in publishers.all],
            }
            for name, texts in outputs.items():
                for n, text in enumerate(texts):
                    (Path(logs) / f"outbox-{name}-{n}.log").write_text(text)
        letters = dead_letters(postgres.url)
        lettered = set().union(*letters.values())
        per_job: dict[int, int] = {}
        for job, _ in state.effects:
            per_job[job] = per_job.get(job, 0) + 1
        committed_ids = set(state.committed.items())
        missing = sorted(set(state.committed) - set(per_job) - lettered)
        rolled_back = sum(rolls_back(j, plan.rollback_share, plan.seed) for j in range(plan.jobs))
        seen = relay_witness.read(witness)
        published = _published(witness)
        return OutboxFigures(
            jobs=plan.jobs,
            committed=len(state.committed),
            rolled_back=rolled_back,
            undecided=plan.jobs - rolled_back - len(state.committed),
            lost=len(missing),
            duplicated=sum(n - 1 for n in per_job.values() if n > 1),
            ran_uncommitted=sum(1 for effect in state.effects if effect not in committed_ids),
            outbox_left=state.outbox_rows,
            in_progress=in_progress_receipts(postgres.url),
            publisher_kills=publishers.kills,
            publisher_kills_after_commit=publishers.kills_after_commit,
            relay_kills=relay_kills.at_random,
            relay_kills_between=relay_kills.between,
            relay_kills_in_workers=relay_kills.in_workers,
            relay_aims_missed=relay_kills.missed,
            worker_kills=workers.kills,
            seen=seen,
            held=relay_kills.held,
            held_published_again=sum(1 for t in relay_kills.held if published.get(t, 0) >= 2),
            wall_time=wall,
            longest_wait=longest_wait(postgres.url),
            events=events,
            dead_letters={outcome: len(jobs) for outcome, jobs in letters.items()},
            missing=missing,
        )


def _published(url: str) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return {k.decode(): int(v) for k, v in client.hgetall(relay_witness.PUBLISHED).items()}
    finally:
        client.close()
