"""A publisher of the chaos suite's ``batches`` mode, as a process of its own (several run
at once, each SIGKILLed and restarted by the run):

    python -m tests.chaos.batch_publisher INDEX PUBLISHERS BATCHES PAUSE SEED

Publisher ``INDEX`` of ``PUBLISHERS`` owns the batches ``INDEX, INDEX + PUBLISHERS, ...``
below ``BATCHES``. Batch ``b`` (``description="chaos batch b"``) has the jobs
:func:`members_of` gives (20 to 50, the same in every process); one ``with
Batch(on_complete=chaos.batch_done.s())`` block publishes them, one every ``PAUSE``
seconds (so that most kills land inside a block), a quarter with ``publish_in`` in a
PostgreSQL transaction of its own, committed, the others with ``delay()``.

A publisher starts, or starts again after a SIGKILL, at the batch after its last
sealed one, as the store says; a block that raised (Redis restarting, PostgreSQL
down: the batch is then abandoned, or left open when the seal itself failed) is
published again as a new batch, with the same jobs: a job's ``idempotency_key`` makes
its second copy a ``DUPLICATE`` once the first ran. A batch whose publisher was killed
inside its block stays open, never completes, and its members run all the same.

It says ``open B BATCH_ID`` when a block opens, ``member BATCH_ID JOB TASK_ID`` after
each publish, ``sealed B BATCH_ID`` after the block, and ``done`` at the end.
"""

from __future__ import annotations

import random
import sys
import time

import sqlalchemy as sa
from sqlalchemy.orm import Session

#: A batch's members: between these many jobs; batch b's job ids are
#: ``b * MAX_MEMBERS + m``.
MIN_MEMBERS, MAX_MEMBERS = 20, 50


class BadJob(Exception):
    """Raised by the jobs :func:`kind_of` calls "discard" (``discard_on``: DISCARDED)."""


class BrokenJob(Exception):
    """Raised by the jobs :func:`kind_of` calls "fail" (no rule: FAILED)."""


def members_of(batch: int, seed: int) -> list[int]:
    size = random.Random(f"{seed}:batch:{batch}").randint(MIN_MEMBERS, MAX_MEMBERS)
    return [batch * MAX_MEMBERS + m for m in range(size)]


def kind_of(job_id: int) -> str:
    """How the job ends, by its id: "discard", "fail" or "effect" (its effect written
    through ``self.atomic()``, then SUCCEEDED; a second copy ends DUPLICATE)."""
    if job_id % 13 == 5:
        return "discard"
    if job_id % 29 == 7:
        return "fail"
    return "effect"


def via_outbox(job_id: int) -> bool:
    return job_id % 4 == 3


def resume_at(engine: sa.Engine, index: int, publishers: int) -> int:
    """The batch after this publisher's last sealed one."""
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT description FROM reliable_batches WHERE state IN ('sealed', "
                "'completed') AND description LIKE 'chaos batch %'"
            )
        )
        mine = [n for (d,) in rows if (n := int(d.split()[-1])) % publishers == index]
    return index if not mine else max(mine) + publishers


def one_batch(engine: sa.Engine, batch: int, pause: float, seed: int) -> str:
    """Publish batch ``batch`` in one block; returns its id once sealed.

    Every job carries the run's start as its ``published_at`` (``CHAOS_STARTED``): a job
    published again in a later block has the same arguments, so its idempotency key
    finds the same payload (a new time would be a conflict: DISCARDED)."""
    import os

    from celery_reliable import Batch
    from celery_reliable.outbox import publish_in
    from tests.chaos.app import app, batch_done, job

    started = float(os.environ["CHAOS_STARTED"])
    with Batch(on_complete=batch_done.s(), description=f"chaos batch {batch}", app=app) as b:
        print(f"open {batch} {b.id}", flush=True)
        for job_id in members_of(batch, seed):
            if via_outbox(job_id):
                with Session(engine) as session, session.begin():
                    task_id = publish_in(session, job.s(job_id, started)).id
            else:
                task_id = job.delay(job_id, started).id
            print(f"member {b.id} {job_id} {task_id}", flush=True)
            time.sleep(pause)
    return b.id


def main(argv: list[str]) -> int:
    import os

    index, publishers, batches = int(argv[0]), int(argv[1]), int(argv[2])
    pause, seed = float(argv[3]), int(argv[4])
    engine = sa.create_engine(os.environ["CHAOS_STORE"], pool_pre_ping=True)
    batch: int | None = None
    while True:
        try:
            if batch is None:
                batch = resume_at(engine, index, publishers)
            if batch >= batches:
                break
            batch_id = one_batch(engine, batch, pause, seed)
        except Exception as exc:  # Redis restarting, PostgreSQL down: read where we are
            print(f"error {type(exc).__name__}: {str(exc).splitlines()[:1]}", flush=True)
            batch = None
            time.sleep(0.5)
            continue
        print(f"sealed {batch} {batch_id}", flush=True)
        batch += publishers
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
