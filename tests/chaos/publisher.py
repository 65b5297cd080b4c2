"""A publisher of the chaos suite's ``outbox`` mode, as a process of its own (several run
at once, each SIGKILLed and restarted by the run):

    python -m tests.chaos.publisher INDEX PUBLISHERS JOBS PAUSE ROLLBACK_SHARE SEED

Publisher ``INDEX`` of ``PUBLISHERS`` owns the jobs ``INDEX, INDEX + PUBLISHERS, ...``
below ``JOBS``. Each job is one transaction of its own on PostgreSQL: the chaos job
written with ``publish_in``, and the application's row (``chaos_jobs``: the job id and
its task id), so that the job's transaction committed if, and only if, its row is
there. The jobs :func:`rolls_back` picks (``ROLLBACK_SHARE`` of them, the same in every
process) are rolled back on purpose, after both writes.

A publisher starts, or starts again after a SIGKILL, at the job after its last
committed one; one whose transaction failed (PostgreSQL down, a commit whose answer
was lost) does the same: what is committed is read, never assumed. It says
``committed JOB TASK_ID`` after each commit, then waits ``PAUSE`` seconds (the run aims
some kills there: right after a commit), and ``done`` at the end.
"""

from __future__ import annotations

import random
import sys
import time

import sqlalchemy as sa
from sqlalchemy.orm import Session


def rolls_back(job_id: int, share: float, seed: int) -> bool:
    """The job's transaction is rolled back on purpose (the same answer everywhere)."""
    return random.Random(f"{seed}:{job_id}").random() < share


def resume_at(engine: sa.Engine, index: int, publishers: int) -> int:
    """The job after this publisher's last committed one."""
    from tests.chaos.effects import jobs

    with engine.connect() as connection:
        last = connection.execute(
            sa.select(sa.func.max(jobs.c.job_id)).where(jobs.c.publisher == index)
        ).scalar()
    return index if last is None else int(last) + publishers


def write(engine: sa.Engine, job_id: int, index: int, roll_back: bool) -> str:
    """One job's transaction; returns its task id."""
    from celery_reliable.outbox import publish_in
    from tests.chaos.app import job
    from tests.chaos.effects import jobs

    with Session(engine) as session:
        session.begin()
        result = publish_in(session, job.s(job_id, time.time()))
        session.execute(
            jobs.insert().values(
                job_id=job_id, publisher=index, task_id=result.id, committed_at=time.time()
            )
        )
        if roll_back:
            session.rollback()
        else:
            session.commit()
    return str(result.id)


def main(argv: list[str]) -> int:
    import os

    from celery_reliable.errors import OutboxError, StoreUnavailable

    index, publishers, total = int(argv[0]), int(argv[1]), int(argv[2])
    pause, share, seed = float(argv[3]), float(argv[4]), int(argv[5])
    engine = sa.create_engine(os.environ["CHAOS_STORE"], pool_pre_ping=True)
    job_id: int | None = None
    while True:
        try:
            if job_id is None:
                job_id = resume_at(engine, index, publishers)
            if job_id >= total:
                break
            roll_back = rolls_back(job_id, share, seed)
            task_id = write(engine, job_id, index, roll_back)
        except (sa.exc.SQLAlchemyError, StoreUnavailable, OutboxError) as exc:
            # PostgreSQL went away (perhaps after the commit): read where we are.
            print(f"error {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            job_id = None
            time.sleep(0.5)
            continue
        print(f"{'rolled back' if roll_back else 'committed'} {job_id} {task_id}", flush=True)
        job_id += publishers
        time.sleep(pause)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
