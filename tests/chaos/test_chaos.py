"""The fast subset of the chaos suite (``make chaos`` runs the whole one): 200 jobs
with effects through ``atomic()`` into PostgreSQL, on two prefork workers that are
SIGKILLed as a whole and restarted, while Redis restarts; then PostgreSQL crashes.

The crash comes after the last kill. A whole worker killed while it takes a message
from Redis loses it: kombu's Redis transport pops the message (BRPOP) and records it
as unacknowledged in a second command, and a worker dead in between had it only in
memory. The full run hits that window after PostgreSQL's crash, when every job's
retry floods the queue and the workers fetch without pause (docs/operations.md, "A
known gap"); this subset does not claim what the project cannot yet keep.

The second test is the ``limits`` mode, short: the same jobs under ``concurrency(3)``
with workers SIGKILLed, what runs at once counted outside the product."""

from __future__ import annotations

import pytest

from tests.chaos.run import Plan, run

pytestmark = [pytest.mark.integration, pytest.mark.prefork, pytest.mark.chaos]


@pytest.mark.timeout(240)
def test_no_job_lost_and_no_effect_duplicated_under_faults() -> None:
    figures = run(
        Plan(
            jobs=200,
            job_seconds=0.1,
            kill_every=4.0,
            chaos_for=13.0,
            redis_restart_at=5.0,
            postgres_crash_at=14.0,
            postgres_down_for=4.0,
            deadline=180.0,
        )
    )
    report = "\n".join(figures.lines())
    assert figures.kills >= 2, report
    assert len(figures.events) == 2, report
    assert figures.lost == 0, report
    assert figures.duplicated == 0, report
    assert figures.dead_letters == {}, report
    assert figures.in_progress == 0, report


@pytest.mark.timeout(120)
def test_no_more_than_n_bodies_at_once_under_kills() -> None:
    """``limits`` mode, short: jobs under ``concurrency(3)`` on four pool processes, a
    whole worker SIGKILLed (and its slots held until their leases end); counted
    outside the product (tests/chaos/at_once.py): never more than three bodies at
    once, three reached, none lost, none run twice."""
    figures = run(
        Plan(
            mode="limits",
            limit=3,
            jobs=200,
            job_seconds=0.1,
            kill_every=3.0,
            chaos_for=10.0,
            redis_restart_at=None,
            postgres_crash_at=None,
            deadline=90.0,
        )
    )
    report = "\n".join(figures.lines())
    assert figures.kills >= 2, report
    assert figures.limit_broken() is None, report
    assert figures.counted is not None and figures.counted.limited > 0, report
    assert figures.counted.killed >= 1, report  # a kill hit a body holding its slot
    assert figures.lost == 0, report
    assert figures.duplicated == 0, report
    assert figures.dead_letters == {}, report
    assert figures.in_progress == 0, report
