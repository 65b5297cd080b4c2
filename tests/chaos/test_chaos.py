"""The fast subset of the chaos suite (``make chaos`` runs the whole one): 200 jobs
with effects through ``atomic()`` into PostgreSQL, on two prefork workers that are
SIGKILLed as a whole and restarted, while Redis restarts; then PostgreSQL crashes.

The crash comes after the last kill. A whole worker killed while it takes a message
from Redis loses it: kombu's Redis transport pops the message (BRPOP) and records it
as unacknowledged in a second command, and a worker dead in between had it only in
memory. The full run hits that window after PostgreSQL's crash, when every job's
retry floods the queue and the workers fetch without pause (docs/operations.md, "A
known gap"); this subset does not claim what the project cannot yet keep.

The ``limits`` mode's subset is in ``test_chaos_limits.py`` (a file of its own, so that
``pytest -n 2 --dist loadfile`` runs the two side by side)."""

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
