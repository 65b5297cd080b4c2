"""The fast subset of the chaos suite's ``batches`` mode (``make chaos`` runs 2,000 jobs
with a Redis restart and a PostgreSQL crash too): about 200 jobs in 6 batches of 20 to
50, published by two publisher processes (a quarter of each batch with ``publish_in``),
run on two prefork workers, while publishers and workers are SIGKILLed and restarted
(``tests/chaos/batches.py``).

Every other publisher kill is aimed right after a publish inside a block, so the run
always leaves a batch open whose jobs run all the same, and are published again in a
new batch (their second copies end DUPLICATE, or the first ones do).

The checks that read a batch's members, endings and summary are proven first, on
batches made wrong by hand: a chaos run that passes must be one they could have
failed. (Being four tests, the file is also ordered by xdist's ``--dist loadfile``
reorder, by number of tests, among the files of a few tests rather than with the
one-test files at the end of `make test`; only the run is marked ``chaos``, the
marker ``tests/conftest.py`` weighs files by.)"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

from tests.chaos.batches import ENDINGS, _check_batch, run_batches
from tests.chaos.run import Plan

# A batch of three members: job 5 is made to be discarded (kind_of), jobs 1 and 2 to
# write their effect; task "t2"'s job effect was written by another task id.
PRINTED = [(1, "t1"), (2, "t2"), (5, "t5")]
EFFECTS = {1: ["t1"], 2: ["other"]}
STORED: dict[str, str | None] = {"t1": "succeeded", "t2": "duplicate", "t5": "discarded"}


def summary(**outcomes: int) -> list[tuple[dict[str, Any], float]]:
    counts = {o: outcomes.get(o, 0) for o in ENDINGS}
    return [({"batch": "b", "total": 3, "outcomes": counts, "failed": ["t5"]}, 0.0)]


def check(
    stored: dict[str, str | None], summaries: list[tuple[dict[str, Any], float]]
) -> list[str]:
    row = SimpleNamespace(description="chaos batch 0", total=3)
    return _check_batch("b", row, PRINTED, stored, EFFECTS, summaries, Counter())  # type: ignore[arg-type]


def test_the_check_passes_a_batch_counted_as_it_ran() -> None:
    assert check(STORED, summary(succeeded=1, duplicate=1, discarded=1)) == []


def test_the_check_finds_a_member_counted_as_it_did_not_end() -> None:
    # t2's job was done by another task id: t2 cannot have succeeded.
    wrong = {**STORED, "t2": "succeeded"}
    found = check(wrong, summary(succeeded=2, discarded=1))
    assert len(found) == 1
    assert "t2" in found[0]


def test_the_check_finds_a_summary_that_is_not_the_endings() -> None:
    found = check(STORED, summary(succeeded=2, discarded=1))
    assert len(found) == 1
    assert "summary" in found[0]
    assert check({k: v for k, v in STORED.items() if k != "t5"}, summary())[0].endswith(
        "members 2 stored, 3 printed, total 3"
    )


@pytest.mark.integration
@pytest.mark.prefork
@pytest.mark.chaos
@pytest.mark.timeout(90)
def test_every_sealed_batch_completes_once_with_its_members_real_endings_under_kills() -> None:
    figures = run_batches(
        Plan(
            mode="batches",
            jobs=200,
            job_seconds=0.05,
            publishers=2,
            publish_for=6.0,
            publisher_kill_every=2.5,
            kill_every=3.0,
            chaos_for=7.0,
            visibility_timeout=3.0,
            redis_restart_at=None,
            postgres_crash_at=None,
            deadline=60.0,
        )
    )
    report = "\n".join(figures.lines())
    print(report)  # the figures, with -s
    assert figures.publisher_kills_in_block >= 1, report  # aimed: it never misses
    assert figures.left_open >= 1, report
    assert figures.worker_kills >= 1, report
    assert figures.never_sealed == 0, report
    assert figures.sealed == figures.completed == figures.batches, report
    assert figures.callbacks_missing == figures.callbacks_twice == 0, report
    assert figures.wrong == [], report
    assert figures.outcomes["discarded"] > 0, report
    assert figures.outcomes["failed"] > 0, report
    assert figures.lost == 0, report
    assert figures.duplicated == 0, report
    assert figures.outbox_left == 0, report
    assert figures.in_progress == 0, report
    assert figures.broken() == [], report
