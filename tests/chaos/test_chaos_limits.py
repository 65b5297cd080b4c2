"""The fast subset of the chaos suite's ``limits`` mode (``make chaos`` runs 2,000
jobs): jobs under ``concurrency(3)`` with workers SIGKILLed, what runs at once counted
outside the product (``tests/chaos/at_once.py``)."""

from __future__ import annotations

import pytest

from tests.chaos.run import Plan, run

pytestmark = [pytest.mark.integration, pytest.mark.prefork, pytest.mark.chaos]


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
            chaos_for=15.0,
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
