"""The worker app of the chaos suite: each job writes one effect row to PostgreSQL,
through ``self.atomic()`` (``CHAOS_MODE=atomic``: exactly once) or with a plain
write (``CHAOS_MODE=plain``: at least once, for comparison). ``CHAOS_MODE=limits`` is
``atomic`` under ``limits=[concurrency(CHAOS_LIMIT)]``, each body counted at once by
the tally in a Redis of its own (``CHAOS_TALLY``, ``tests/chaos/at_once.py``).
``CHAOS_MODE=outbox`` is ``atomic`` without an ``idempotency_key``: its jobs are
written with ``publish_in`` (``tests/chaos/publisher.py``), and a message from the
outbox claims its task id, so a double publish runs once; every process that relays
is watched by ``tests/chaos/relay_witness.py`` (``CHAOS_WITNESS``).
``CHAOS_MODE=batches`` is ``atomic`` (soft and hard time limits of 1 s and 2 s, so a
killed body's receipt frees within 7 s) with some jobs made to end DISCARDED or FAILED
by their id (``tests/chaos/batch_publisher.py:kind_of``); its jobs are members of
batches whose ``on_complete`` is ``chaos.batch_done``, which writes the summary it got
through ``self.atomic()`` (``tests/chaos/batches.py``)."""

from __future__ import annotations

import os
import random
import time

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.exc import OperationalError

from celery_reliable import ReliableTask, discard_on, retry_on
from celery_reliable.backoff import exponential
from celery_reliable.limits import concurrency
from celery_reliable.signals import OutcomeEvent, task_outcome
from tests.chaos import relay_witness
from tests.chaos.at_once import Tally
from tests.chaos.effects import callbacks, effects

MODE = os.environ["CHAOS_MODE"]
STORE = os.environ["CHAOS_STORE"]
VISIBILITY_TIMEOUT = float(os.environ.get("CHAOS_VISIBILITY_TIMEOUT", "5"))
#: Mean seconds of work per job (uniform between 0 and twice this).
JOB_SECONDS = float(os.environ.get("CHAOS_JOB_SECONDS", "0.05"))
#: ``limits`` mode: the n of ``concurrency(n)``.
LIMIT = int(os.environ.get("CHAOS_LIMIT", "3"))

app = Celery("chaos", broker=os.environ["CHAOS_BROKER"])
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT},
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    worker_lost_wait=1.0,
    reliable_database_url=STORE,
    reliable_rescue_interval=1.0,
    reliable_history=False,
    reliable_log_outcomes=False,
)

_engine: sa.Engine | None = None


def _plain_engine() -> sa.Engine:
    global _engine
    if _engine is None:
        _engine = sa.create_engine(STORE, pool_pre_ping=True)
    return _engine


def _effect(job_id: int, task_id: str, published_at: float) -> dict[str, object]:
    return {
        "job_id": job_id,
        "task_id": task_id,
        "published_at": published_at,
        "done_at": time.time(),
    }


RETRY = {"wait": exponential(factor=0.5, cap=3), "attempts": 60}

if MODE == "atomic":

    @app.task(
        base=ReliableTask, bind=True, name="chaos.job", timeout=5, idempotency_key="job:{job_id}"
    )
    @retry_on(OperationalError, **RETRY)  # the database dropped out mid-transaction
    def job(self: ReliableTask, job_id: int, published_at: float) -> None:
        time.sleep(random.uniform(0, 2 * JOB_SECONDS))  # the job's own work time
        with self.atomic() as session:
            session.execute(effects.insert().values(_effect(job_id, self.request.id, published_at)))

elif MODE == "limits":
    tally = Tally(os.environ["CHAOS_TALLY"])

    @app.task(
        base=ReliableTask,
        bind=True,
        name="chaos.job",
        timeout=5,
        idempotency_key="job:{job_id}",
        limits=[concurrency(LIMIT)],
    )
    @retry_on(OperationalError, **RETRY)
    def job(self: ReliableTask, job_id: int, published_at: float) -> None:
        with tally.running(job_id):
            time.sleep(random.uniform(0, 2 * JOB_SECONDS))  # the job's own work time
            with self.atomic() as session:
                session.execute(
                    effects.insert().values(_effect(job_id, self.request.id, published_at))
                )

    def _count_limited(event: OutcomeEvent | None = None, **_: object) -> None:
        """Each wait for a slot (SNOOZED by the limit, StatsD's ``limited``)."""
        if event is not None and event.counted_as == "limited":
            tally.count_limited()

    task_outcome.connect(_count_limited, weak=False)

elif MODE == "outbox":

    @app.task(
        base=ReliableTask,
        bind=True,
        name="chaos.job",
        timeout=5,
        waive={"idempotency": "published with publish_in: the job claims its task id"},
    )
    @retry_on(OperationalError, **RETRY)
    def job(self: ReliableTask, job_id: int, published_at: float) -> None:
        time.sleep(random.uniform(0, 2 * JOB_SECONDS))  # the job's own work time
        with self.atomic() as session:
            session.execute(effects.insert().values(_effect(job_id, self.request.id, published_at)))

    if os.environ.get("CHAOS_WITNESS"):
        relay_witness.install(os.environ["CHAOS_WITNESS"])
        outcomes = relay_witness.OutcomeCounter(os.environ["CHAOS_WITNESS"])

        def _count_outcome(event: OutcomeEvent | None = None, **_: object) -> None:
            if event is not None and event.task_id is not None:
                outcomes.count(event.outcome.value)

        task_outcome.connect(_count_outcome, weak=False)

elif MODE == "batches":
    from tests.chaos.batch_publisher import BadJob, BrokenJob, kind_of

    @app.task(
        base=ReliableTask,
        bind=True,
        name="chaos.job",
        soft_time_limit=1,
        time_limit=2,
        idempotency_key="job:{job_id}",
    )
    @discard_on(BadJob)
    @retry_on(OperationalError, **RETRY)
    def job(self: ReliableTask, job_id: int, published_at: float) -> None:
        kind = kind_of(job_id)
        if kind == "discard":
            raise BadJob(job_id)
        if kind == "fail":
            raise BrokenJob(job_id)  # no rule: FAILED
        time.sleep(random.uniform(0, 2 * JOB_SECONDS))  # the job's own work time
        with self.atomic() as session:
            session.execute(effects.insert().values(_effect(job_id, self.request.id, published_at)))

    @app.task(
        base=ReliableTask,
        bind=True,
        name="chaos.batch_done",
        timeout=5,
        waive={"idempotency": "a batch's callback comes from the outbox: it claims its task id"},
    )
    @retry_on(OperationalError, **RETRY)
    def batch_done(self: ReliableTask, summary: dict[str, object]) -> None:
        import json

        with self.atomic() as session:
            session.execute(
                callbacks.insert().values(
                    batch_id=summary["batch"],
                    task_id=self.request.id,
                    summary=json.dumps(summary),
                    done_at=time.time(),
                )
            )

else:

    @app.task(
        base=ReliableTask,
        bind=True,
        name="chaos.job",
        timeout=5,
        waive={"idempotency": "the chaos suite's at-least-once comparison"},
    )
    @retry_on(OperationalError, **RETRY)
    def job(self: ReliableTask, job_id: int, published_at: float) -> None:
        time.sleep(random.uniform(0, 2 * JOB_SECONDS))  # the job's own work time
        with _plain_engine().begin() as connection:
            connection.execute(
                effects.insert().values(_effect(job_id, self.request.id, published_at))
            )
