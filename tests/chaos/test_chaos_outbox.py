"""The fast subset of the chaos suite's ``outbox`` mode (``make chaos`` runs 2,000 jobs
with a Redis restart and a PostgreSQL crash too): 200 jobs written with ``publish_in``
by three publisher processes (a tenth rolled back on purpose), relayed by the workers'
relay threads and a ``celery reliable relay``, while publishers, relays and workers
are SIGKILLed and restarted (``tests/chaos/outbox.py``).

Every kill is sure to happen: a publisher is killed right after a commit it printed
(it then pauses), or at once; the relay kill is aimed between a publish and its delete
(``tests/chaos/relay_witness.py``: the relay that publishes next waits there to be
killed), so the run always has a real double publish."""

from __future__ import annotations

import pytest

from tests.chaos.outbox import run_outbox
from tests.chaos.run import Plan

pytestmark = [pytest.mark.integration, pytest.mark.prefork, pytest.mark.chaos]


@pytest.mark.timeout(150)
def test_every_committed_job_runs_once_and_no_rolled_back_one_runs_under_kills() -> None:
    figures = run_outbox(
        Plan(
            mode="outbox",
            jobs=200,
            job_seconds=0.1,
            publishers=3,
            publish_for=8.0,
            publisher_kill_every=2.0,
            relays=1,
            relay_kill_every=3.0,
            kill_every=4.0,
            chaos_for=7.5,
            visibility_timeout=3.0,
            redis_restart_at=None,
            postgres_crash_at=None,
            deadline=100.0,
        )
    )
    report = "\n".join(figures.lines())
    print(report)  # the figures, with -s
    assert figures.publisher_kills >= 1, report
    assert figures.publisher_kills_after_commit >= 1, report
    assert figures.relay_kills_between >= 1, report  # aimed: it never misses
    assert figures.worker_kills >= 1, report
    # The aimed relay's row went out twice and ran once.
    assert figures.held_published_again == len(figures.held), report
    assert figures.seen.published_twice >= 1, report
    assert figures.committed + figures.rolled_back == figures.jobs, report
    assert figures.rolled_back > 0, report
    assert figures.lost == 0, report
    assert figures.duplicated == 0, report
    assert figures.ran_uncommitted == 0, report
    assert figures.outbox_left == 0, report
    assert figures.dead_letters == {}, report
    assert figures.in_progress == 0, report
    assert figures.broken() == [], report
