"""Members' endings counted in groups (``batches/tally.py``, ``batches/counter.py``):
the store's count of a group on SQLite and PostgreSQL (once per task id, with the
endings counted one by one; two groups at once complete a batch once), and the list
in a real Redis (a dead counter's group moved back, a stopping counter's given back,
an ending that is not one dropped, never the others)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from celery_reliable.batches import tally
from celery_reliable.batches.tally import EndingsList, decode, encode
from celery_reliable.store import Store
from celery_reliable.store.batches import ENDINGS, Ending
from tests.support.celery_apps import migrated_store
from tests.support.waiting import wait_until

pytestmark = pytest.mark.integration

NOW = datetime(2026, 12, 7, 9, 0)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with migrated_store(store_url, "batch_endings") as found:
        yield found


def counts(**given: int) -> dict[str, int]:
    return {outcome: given.get(outcome, 0) for outcome in ENDINGS}


def sealed(store: Store, members: int) -> str:
    batch_id = str(uuid.uuid4())
    store.batches.open(batch_id, None, None, None, NOW)
    assert (
        store.batches.seal(batch_id, [(f"m{i}", "t") for i in range(members)], NOW, lambda *a: 0)
        is None
    )
    return batch_id


def test_a_group_counts_each_task_id_once_and_completes_its_batch_once(store: Store) -> None:
    rows = store.batches
    batch_id, other = sealed(store, 4), sealed(store, 2)
    fired: list[tuple[str, list[str]]] = []

    def on_completed(_: Any, batch: Any, failed: list[str]) -> None:
        fired.append((batch.id, failed))

    # m0 counted one by one first (the direct path): the group's m0 adds nothing.
    assert rows.member_ended(batch_id, "m0", "t", "succeeded", NOW, on_completed) is None
    group = [
        Ending(batch_id, "m0", "t", "failed", NOW),
        Ending(batch_id, "m1", "t", "failed", NOW),
        Ending(batch_id, "m1", "t", "succeeded", NOW),  # the same task id again
        Ending(batch_id, "m2", "t", "discarded", NOW),
        Ending(other, "m0", "t", "duplicate", NOW),
    ]
    assert rows.members_ended(group, NOW, on_completed) == []
    stored = rows.get(batch_id)
    assert stored is not None and (stored.done, stored.state) == (3, "sealed")
    assert stored.outcomes == counts(succeeded=1, failed=1, discarded=1)
    # The same group again (counted twice, its counter thought dead): nothing changes.
    assert rows.members_ended(group, NOW, on_completed) == []
    assert rows.get(batch_id) == stored
    done = rows.members_ended(
        [Ending(other, "m1", "t", "succeeded", NOW), Ending(batch_id, "m3", "t", "exhausted", NOW)],
        NOW,
        on_completed,
    )
    assert sorted(b.id for b in done) == sorted([batch_id, other])
    assert sorted(fired) == sorted([(batch_id, ["m1", "m2", "m3"]), (other, [])])
    final = rows.get(batch_id)
    assert final is not None and final.state == "completed"
    assert final.outcomes == counts(succeeded=1, failed=1, discarded=1, exhausted=1)
    assert {m[0]: m[2] for m in rows.members(batch_id)} == {
        "m0": "succeeded",
        "m1": "failed",
        "m2": "discarded",
        "m3": "exhausted",
    }
    with pytest.raises(ValueError, match="'retried' does not end"):
        rows.members_ended([Ending(batch_id, "m9", "t", "retried", NOW)], NOW, on_completed)


@pytest.mark.parametrize("round_", range(10))
def test_two_groups_that_finish_a_batch_at_once_complete_it_once(store: Store, round_: int) -> None:
    """Two workers' counters, each with half of a batch's endings (and of another's,
    in the other order of keys), committing at the same moment."""
    rows = store.batches
    first, second = sealed(store, 20), sealed(store, 20)
    fired: list[str] = []
    lock = threading.Lock()

    def on_completed(_: Any, batch: Any, __: list[str]) -> None:
        with lock:
            fired.append(batch.id)

    halves = [
        [
            Ending(b, f"m{i}", "t", "succeeded", NOW)
            # Opposite orders of batches: the store's own order keeps them apart.
            for b in ((first, second) if n == 0 else (second, first))
            for i in range(n, 20, 2)
        ]
        for n in (0, 1)
    ]
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def count(group: list[Ending]) -> None:
        start.wait()
        try:
            rows.members_ended(reversed(group), NOW, on_completed)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=count, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted(fired) == sorted([first, second])
    for batch_id in (first, second):
        stored = rows.get(batch_id)
        assert stored is not None and (stored.state, stored.done) == ("completed", 20)


# The list, in a real Redis.


@pytest.fixture
def endings(redis_url: str) -> EndingsList:
    found = EndingsList(redis_url, f"sqlite:///{uuid.uuid4().hex}.db")
    found.client().delete(found.key, found.takers)
    return found


def ending(task_id: str, outcome: str = "succeeded") -> str:
    return encode("b", task_id, "t", outcome, NOW)


def task_ids(raw: list[bytes]) -> list[str]:
    return [e.task_id for e in map(decode, raw) if e is not None]


def test_a_group_is_held_until_counted_and_taken_again_after_a_failed_count(
    endings: EndingsList,
) -> None:
    for n in range(3):
        endings.push(ending(f"t{n}"))
    assert task_ids(endings.take("one", block=0)) == ["t0", "t1", "t2"]
    assert endings.waiting() == 0
    endings.push(ending("t3"))
    # Its count failed (the store down): the same group, with what came since.
    assert task_ids(endings.take("one", block=0)) == ["t0", "t1", "t2", "t3"]
    assert task_ids(endings.take("two", block=0)) == []
    endings.counted("one")
    assert task_ids(endings.take("one", block=0)) == []


def test_a_silent_counter_s_group_goes_back_to_the_list_and_a_live_one_s_stays(
    endings: EndingsList, monkeypatch: pytest.MonkeyPatch
) -> None:
    endings.push(ending("t0"))
    assert task_ids(endings.take("dead", block=0)) == ["t0"]
    endings.push(ending("t1"))
    assert task_ids(endings.take("alive", block=0)) == ["t1"]
    assert endings.rescue() == 0, "both took just now"
    # "dead" stamped long ago, "alive" now: as if a minute went by without its take.
    endings.client().zadd(endings.takers, {"dead": 0})
    assert endings.rescue() == 1
    assert task_ids(endings.take("other", block=0)) == ["t0"]
    assert task_ids(endings.take("alive", block=0)) == ["t1"]
    # A counter that stops gives its group back at once.
    assert endings.rescue(release="alive") == 1
    assert task_ids(endings.take("third", block=0)) == ["t1"]


def test_a_dead_process_of_this_host_is_found_without_waiting(endings: EndingsList) -> None:
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(gone.stdout)
    here = socket.gethostname()
    dead, alive = f"{here}.{dead_pid}.aaaaaaaa", f"{here}.{os.getppid()}.bbbbbbbb"
    elsewhere = f"another-host.{dead_pid}.cccccccc"
    mine = endings.new_owner()
    for owner in (dead, alive, elsewhere, mine):
        endings.push(ending(owner))
        endings.take(owner, block=0)
    assert endings.dead_here() == [dead]


def test_a_blocked_take_wakes_for_the_first_ending(endings: EndingsList) -> None:
    taken: list[list[bytes]] = []
    waiter = threading.Thread(target=lambda: taken.append(endings.take("one", block=5)))
    waiter.start()
    # The take is blocked once Redis lists it as a client in BRPOPLPUSH.
    client = endings.client()

    def blocked() -> bool:
        return any(c.get("cmd") == "brpoplpush" for c in client.client_list())

    wait_until(blocked, "the take blocking")
    endings.push(ending("t0"))
    waiter.join(5)
    assert [task_ids(t) for t in taken] == [["t0"]]


def test_what_is_not_an_ending_is_dropped() -> None:
    assert decode(b"not json") is None
    assert decode(encode("b", "t", "n", "retried", NOW)) is None
    assert decode(encode("b", "t", "n", "failed", NOW)) == Ending("b", "t", "n", "failed", NOW)


def test_the_key_is_the_store_s_without_its_password() -> None:
    one = tally.list_key("postgresql://u:secret@db/reliable")
    assert one == tally.list_key("postgresql://u:other@db/reliable")
    assert one != tally.list_key("postgresql://u:secret@db/other")
    assert "secret" not in one
