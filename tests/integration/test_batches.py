"""Batches with a real Redis broker, a real embedded worker (its relay thread publishes
the callbacks) and a SQLite and a PostgreSQL store.

Every outcome ends a member but RETRIED and SNOOZED; ``on_complete`` fires once with
the summary, ``on_success`` only when no member ended DISCARDED, EXHAUSTED or FAILED;
members that retry count once, at their end; a member that ends before the seal cannot
complete the batch; an empty batch completes at once; a task id published twice (as a
redelivery would run it twice) counts once; a block that raised never fires; a
callback that fails is retried like any task; misuse (nesting, re-entering, a plain
task, an eager app) is refused before anything is published; a member that ends while
the store cannot count it is counted once it can, once. Absence is proven after
:func:`settle`: the worker has run everything the test published.

Two workers ending the last two members at once, and a worker SIGKILLed mid-batch, are
in ``test_batches_processes.py``.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery, chord, group
from sqlalchemy.orm import Session

from celery_reliable import Batch, Cancel, Discard, ReliableTask, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.errors import BatchError
from celery_reliable.headers import BATCH_HEADER
from celery_reliable.outbox import publish_in
from celery_reliable.store import Store, migrate, store_for
from celery_reliable.store.batches import ENDINGS
from tests.docs_blocks import DOCS, marked_block
from tests.support.batch_endings import held_endings
from tests.support.celery_apps import new_app
from tests.support.cli import run_reliable
from tests.support.outcomes import OutcomeRecorder
from tests.support.store_faults import batch_tables_away
from tests.support.waiting import wait_until
from tests.support.workers import embedded_worker, settle

pytestmark = pytest.mark.integration

CLI_APP = "tests.support.apps.cli"


class Flaky(Exception):
    pass


class Importer:
    """The module's app: members that end every way, callbacks that keep the summary
    they got in Redis."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.effects = redis.Redis.from_url(app.conf.broker_url)
        effects = self.effects

        @app.task(base=ReliableTask, name="bt.row", bind=True, timeout=30, shared=False)
        @retry_on(Flaky, wait=fixed(0.05), attempts=2)
        def row(self: ReliableTask, key: str, how: str = "ok") -> str:
            runs = effects.incr(f"runs:{key}")
            effects.rpush(f"batch:{key}", str((self.request.headers or {}).get(BATCH_HEADER)))
            if how == "discard":
                raise Discard("bad row")
            if how == "cancel":
                raise Cancel("row withdrawn")
            if how == "fail":
                raise RuntimeError("unclassified")
            if how == "exhaust" or (how == "flaky" and runs == 1):
                raise Flaky(f"run {runs}")
            if how == "wait":
                wait_until(lambda: effects.exists(f"release:{key}"), "the release", timeout=25)
            return key

        @app.task(
            base=ReliableTask,
            name="bt.keyed",
            bind=True,
            timeout=30,
            idempotency_key="bt:{key}",
            shared=False,
        )
        def keyed(self: ReliableTask, key: str) -> str:
            effects.incr(f"runs:{key}")
            return key

        @app.task(base=ReliableTask, name="bt.collect", bind=True, timeout=30, shared=False)
        def collect(self: ReliableTask, summary: dict[str, Any], label: str) -> None:
            effects.rpush(f"got:{label}", json.dumps(summary))

        # Only the report's test uses it: what its report counts is that test's.
        @app.task(base=ReliableTask, name="bt.tally", bind=True, timeout=30, shared=False)
        def tally(self: ReliableTask, summary: dict[str, Any], label: str) -> None:
            effects.rpush(f"got:{label}", json.dumps(summary))

        @app.task(base=ReliableTask, name="bt.shaky", bind=True, timeout=30, shared=False)
        @retry_on(Flaky, wait=fixed(0.05), attempts=3)
        def shaky(self: ReliableTask, summary: dict[str, Any], label: str) -> None:
            if effects.incr(f"runs:{label}") == 1:
                raise Flaky("the callback's first run fails")
            effects.rpush(f"got:{label}", json.dumps(summary))

        @app.task(name="bt.plain", shared=False)
        def plain() -> None:
            return None

        @app.task(base=ReliableTask, name="bt.sum", bind=True, timeout=30, shared=False)
        def total(self: ReliableTask, values: list[str]) -> int:
            return len(values)

        self.row, self.keyed, self.collect, self.shaky, self.plain, self.total = (
            row,
            keyed,
            collect,
            shaky,
            plain,
            total,
        )
        self.tally = tally
        store = store_for(app)
        assert store is not None
        migrate.upgrade(store.engine)
        self.store: Store = store

    def got(self, label: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.effects.lrange(f"got:{label}", 0, -1)]

    def wait_got(self, label: str, count: int = 1) -> list[dict[str, Any]]:
        return wait_until(
            lambda: (found := self.got(label)) and len(found) >= count and found,
            f"{count} callback run(s) of {label}",
            seen=lambda: self.got(label),
        )

    def batch_of(self, key: str) -> list[str]:
        """The batch header each run of ``bt.row(key)`` saw."""
        return [x.decode() for x in self.effects.lrange(f"batch:{key}", 0, -1)]

    def runs(self, key: str) -> int:
        return int(self.effects.get(f"runs:{key}") or 0)


@pytest.fixture(scope="module")
def importer(redis_url: str, module_store_url: str) -> Importer:
    return Importer(new_app(redis_url, "batches", reliable_database_url=module_store_url))


@pytest.fixture(scope="module")
def worker(importer: Importer) -> Iterator[Any]:
    with embedded_worker(importer.app, concurrency=4) as running:
        yield running


def key(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def callbacks(importer: Importer, label: str) -> dict[str, Any]:
    return {
        "on_complete": importer.collect.s(f"{label}:complete"),
        "on_success": importer.collect.s(f"{label}:success"),
    }


def counts(**given: int) -> dict[str, int]:
    return {outcome: given.get(outcome, 0) for outcome in ENDINGS}


def test_all_good_members_fire_on_complete_and_on_success_once_with_the_summary(
    importer: Importer, worker: Any
) -> None:
    label = key("good")
    with Batch(**callbacks(importer, label), description="import 42") as batch:
        results = [importer.row.delay(key("r")) for _ in range(5)]
        results.append(importer.row.apply_async((key("r"),), countdown=0.1))
        results.extend(group(importer.row.s(key("g")) for _ in range(3)).apply_async().results)
    assert batch.members == [r.id for r in results]
    for which in ("complete", "success"):
        (summary,) = importer.wait_got(f"{label}:{which}")
        assert summary == {
            "batch": batch.id,
            "description": "import 42",
            "total": 9,
            "outcomes": counts(succeeded=9),
            "failed": [],
        }
    settle(importer.app)
    assert len(importer.got(f"{label}:complete")) == len(importer.got(f"{label}:success")) == 1
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and stored.state == "completed"
    assert (stored.total, stored.done) == (9, 9)
    assert all(outcome == "succeeded" for _, _, outcome in importer.store.batches.members(batch.id))


def test_mixed_outcomes_fire_on_complete_only_and_count_each_member_at_its_end(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder
) -> None:
    label = key("mixed")
    done_before = key("keyed")
    importer.keyed.delay(done_before).get(timeout=20)  # its key succeeded already
    with Batch(**callbacks(importer, label)) as batch:
        ok = importer.row.delay(key("ok"))
        flaky = importer.row.delay(key("flaky"), "flaky")
        exhausted = importer.row.delay(key("exhaust"), "exhaust")
        discarded = importer.row.delay(key("discard"), "discard")
        cancelled = importer.row.delay(key("cancel"), "cancel")
        failed = importer.row.delay(key("fail"), "fail")
        duplicate = importer.keyed.delay(done_before)
    (summary,) = importer.wait_got(f"{label}:complete")
    assert summary["total"] == 7
    assert summary["outcomes"] == counts(
        succeeded=2, duplicate=1, cancelled=1, discarded=1, exhausted=1, failed=1
    )
    assert sorted(summary["failed"]) == sorted([exhausted.id, discarded.id, failed.id])
    # The retried members ran twice and were counted once, at their end. (The batch's
    # receiver of the last ending may fire the callback before this test's recorder,
    # connected after it, is told of that ending.)
    for member, executions in ((flaky, 2), (exhausted, 2), (duplicate, 1)):
        outcomes.wait_for(member.id, executions)
    assert [e.outcome.value for e in outcomes.for_id(flaky.id)] == ["retried", "succeeded"]
    assert [e.outcome.value for e in outcomes.for_id(exhausted.id)] == ["retried", "exhausted"]
    assert [e.outcome.value for e in outcomes.for_id(duplicate.id)] == ["duplicate"]
    assert ok.id in batch.members and cancelled.id in batch.members
    settle(importer.app)
    assert importer.got(f"{label}:success") == []
    assert len(importer.got(f"{label}:complete")) == 1
    assert importer.store.outbox.all() == []


def test_an_empty_batch_completes_at_once(importer: Importer, worker: Any) -> None:
    label = key("empty")
    with Batch(**callbacks(importer, label), description="nothing to do") as batch:
        pass
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and stored.state == "completed"
    for which in ("complete", "success"):
        assert importer.wait_got(f"{label}:{which}") == [
            {
                "batch": batch.id,
                "description": "nothing to do",
                "total": 0,
                "outcomes": counts(),
                "failed": [],
            }
        ]


def test_a_member_that_ends_before_the_seal_cannot_complete_the_batch(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder
) -> None:
    label = key("early")
    held = key("held")
    with Batch(on_complete=importer.collect.s(label)) as batch:
        first = importer.row.delay(key("first"))
        outcomes.wait_for(first.id)
        # Every member so far has ended: the batch is still open.
        wait_until(
            lambda: (b := importer.store.batches.get(batch.id)) and b.done == 1,
            "the first member counted",
        )
        stored = importer.store.batches.get(batch.id)
        assert stored is not None and stored.state == "open"
        last = importer.row.delay(held, "wait")
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and stored.state == "sealed" and stored.total == 2
    importer.effects.set(f"release:{held}", 1)
    outcomes.wait_for(last.id)
    (summary,) = importer.wait_got(label)
    assert summary["total"] == 2 and summary["outcomes"] == counts(succeeded=2)


def test_every_member_ended_before_the_seal_then_the_seal_completes_it(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder
) -> None:
    label = key("sealer")
    with Batch(on_complete=importer.collect.s(label)) as batch:
        results = [importer.row.delay(key("r")) for _ in range(3)]
        for result in results:
            outcomes.wait_for(result.id)
        wait_until(
            lambda: (b := importer.store.batches.get(batch.id)) and b.done == 3,
            "every member counted",
        )
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and stored.state == "completed"
    (summary,) = importer.wait_got(label)
    assert summary["total"] == 3


def test_a_task_id_that_runs_twice_counts_once(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder
) -> None:
    """The same message twice (as a redelivery would run it): two executions, one
    member, one count."""
    label = key("twice")
    name = key("twice")
    task_id = str(uuid.uuid4())
    with Batch(on_complete=importer.collect.s(label)) as batch:
        importer.row.apply_async((name,), task_id=task_id)
        importer.row.apply_async((name,), task_id=task_id)
    outcomes.wait_for(task_id, 2)
    (summary,) = importer.wait_got(label)
    assert summary["total"] == 1 and summary["outcomes"] == counts(succeeded=1)
    assert batch.members == [task_id, task_id]
    assert importer.runs(name) == 2
    settle(importer.app)
    assert len(importer.got(label)) == 1


def test_the_store_counts_a_members_end_once(importer: Importer) -> None:
    """The store itself: a second ending of one task id (a redelivery, a DUPLICATE)
    adds nothing, whatever its outcome."""
    rows = importer.store.batches
    batch_id = str(uuid.uuid4())
    fired: list[Any] = []
    now = datetime(2026, 12, 7)

    def end(task_id: str, outcome: str) -> Any:
        return rows.member_ended(batch_id, task_id, "t", outcome, now, lambda *a: fired.append(a))

    rows.open(batch_id, None, None, None, now)
    assert end("a", "failed") is None
    assert end("a", "succeeded") is None
    assert rows.seal(batch_id, [("a", "t"), ("b", "t")], now, lambda *a: fired.append(a)) is None
    assert end("a", "duplicate") is None and fired == []
    done = end("b", "succeeded")
    assert done is not None and done.state == "completed"
    assert done.outcomes == counts(failed=1, succeeded=1)
    assert len(fired) == 1 and fired[0][2] == ["a"]
    assert end("b", "failed") is None and len(fired) == 1
    with pytest.raises(LookupError):
        rows.seal(batch_id, [], now, lambda *a: fired.append(a))


def test_a_callback_that_fails_is_retried_like_any_task(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder
) -> None:
    label = key("shaky")
    with Batch(on_complete=importer.shaky.s(label)) as batch:
        importer.row.delay(key("r"))
    (summary,) = importer.wait_got(label)
    assert summary["batch"] == batch.id
    callback_id = f"{batch.id}-on_complete"
    found = outcomes.wait_for(callback_id, 2)
    assert [e.outcome.value for e in found] == ["retried", "succeeded"]
    settle(importer.app)
    assert importer.runs(label) == 2 and len(importer.got(label)) == 1


def test_a_block_that_raised_abandons_the_batch(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder
) -> None:
    label = key("abandoned")
    with pytest.raises(ZeroDivisionError), Batch(**callbacks(importer, label)) as batch:
        member = importer.row.delay(key("r"))
        1 / 0  # noqa: B018
    outcomes.wait_for(member.id)
    wait_until(
        lambda: (b := importer.store.batches.get(batch.id)) and b.done == 1,
        "the member counted",
    )
    settle(importer.app)
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and (stored.state, stored.total) == ("abandoned", 1)
    assert importer.got(f"{label}:complete") == importer.got(f"{label}:success") == []


def test_a_chords_header_and_publish_in_are_members(
    importer: Importer, worker: Any, module_store_url: str
) -> None:
    label = key("canvas")
    engine = sa.create_engine(module_store_url)
    try:
        with Batch(on_complete=importer.collect.s(label)) as batch:
            result = chord(importer.row.s(key("h")) for _ in range(2))(importer.total.s())
            with engine.begin() as connection:
                written = publish_in(connection, importer.row.s(key("outbox")))
    finally:
        engine.dispose()
    assert result.get(timeout=20) == 2
    (summary,) = importer.wait_got(label)
    # The chord's header tasks and the outbox's message; not the chord's body.
    assert summary["total"] == 3 and summary["outcomes"] == counts(succeeded=3)
    assert written.id in batch.members and result.id not in batch.members


def test_misuse_is_refused_before_anything_is_published(importer: Importer) -> None:
    with Batch(app=importer.app) as outer:
        with pytest.raises(BatchError, match="batches do not nest"), Batch(app=importer.app):
            pass
        with pytest.raises(BatchError, match=r"bt\.plain .*is not a ReliableTask"):
            importer.plain.delay()
    assert outer.members == []
    with pytest.raises(BatchError, match="takes members only inside its one block"), outer:
        pass
    with pytest.raises(TypeError, match=r"on_complete=\.\.\.\): a signature"):
        Batch(on_complete=importer.collect)  # type: ignore[arg-type]
    importer.app.conf.task_always_eager = True
    try:
        with pytest.raises(BatchError, match="task_always_eager"), Batch(app=importer.app):
            pass
    finally:
        importer.app.conf.task_always_eager = False


def test_members_carry_the_batch_across_retries_and_others_carry_none(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder
) -> None:
    flaky, alone = key("flaky"), key("alone")
    with Batch(on_complete=importer.collect.s(key("h"))) as batch:
        member = importer.row.delay(flaky, "flaky")
    importer.row.delay(alone).get(timeout=20)
    outcomes.wait_for(member.id, 2)
    assert importer.batch_of(flaky) == [batch.id, batch.id]
    assert importer.batch_of(alone) == ["None"]


def test_members_are_counted_under_sentry_s_celery_integration(
    importer: Importer, worker: Any, tmp_path: Any
) -> None:
    """sentry-sdk's CeleryIntegration nests the custom headers in a "headers" header
    (the worker's request.headers), passed as the publish's headers option, which
    Celery merges into the message after the batch's stamp: the stamp goes there too.
    (Before: every member ran, none was counted, the batch stayed sealed.)"""
    import sentry_sdk
    from celery.signals import before_task_publish
    from sentry_sdk.integrations.celery import CeleryIntegration

    from tests.support.sentry import running_sentry_server, sentry_off

    nested: list[Any] = []

    def seen(sender: Any = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        # This thread's publishes only: the worker's relay may be publishing an earlier
        # test's callbacks meanwhile.
        if threading.get_ident() == publisher:
            nested.append((headers or {}).get("headers"))

    publisher = threading.get_ident()

    before_task_publish.connect(seen, weak=False)
    try:
        with running_sentry_server() as server:
            sentry_sdk.init(
                dsn=server.dsn, integrations=[CeleryIntegration()], auto_enabling_integrations=False
            )
            label = key("sentry")
            with Batch(**callbacks(importer, label)) as batch:
                keys = [key("s") for _ in range(3)]
                for each in keys:
                    importer.row.delay(each)
                members = list(nested)
            # Sentry did nest its headers (the case under test), the batch's id with them.
            assert len(members) == 3 and all("sentry-trace" in n for n in members), members
            assert all(n[BATCH_HEADER] == batch.id for n in members), members
            (summary,) = importer.wait_got(f"{label}:complete")
            assert summary["total"] == 3 and summary["outcomes"] == counts(succeeded=3)
            assert all(importer.batch_of(each) == [batch.id] for each in keys)
    finally:
        before_task_publish.disconnect(seen)
        sentry_sdk.get_client().close(timeout=0)
        sentry_off()  # the integration's patches stay in the process, inactive


def test_completed_abandoned_and_unsealed_batches_are_pruned_after_the_ttl(
    importer: Importer,
) -> None:
    rows = importer.store.batches
    then = datetime(2020, 1, 1)
    ids = {name: f"{name}-{uuid.uuid4()}" for name in ("done", "abandoned", "open", "stuck")}
    for batch_id in ids.values():
        rows.open(batch_id, None, None, None, then)
    rows.seal(ids["done"], [("m1", "t")], then, lambda *a: None)
    assert rows.member_ended(ids["done"], "m1", "t", "succeeded", then, lambda *a: None)
    rows.seal(ids["abandoned"], [("m2", "t")], then, lambda *a: None, abandon=True)
    rows.seal(ids["stuck"], [("m3", "t")], then, lambda *a: None)
    assert rows.prune(3600, now=datetime(2020, 1, 1, 0, 30)) == 0
    assert rows.prune(3600, now=datetime(2020, 1, 2)) == 3
    assert [rows.get(ids[n]) for n in ("done", "abandoned", "open")] == [None, None, None]
    assert rows.members(ids["done"]) == [] and rows.members(ids["abandoned"]) == []
    # Sealed and never completed: kept, for someone to look at.
    assert rows.get(ids["stuck"]) is not None and len(rows.members(ids["stuck"])) == 1


def test_batch_list_and_show_on_the_command_line(
    importer: Importer, worker: Any, module_store_url: str
) -> None:
    label = key("cli")
    with Batch(on_complete=importer.collect.s(label), description="rows\tof cli") as batch:
        importer.row.delay(key("ok"))
        bad = importer.row.delay(key("bad"), "discard")
    importer.wait_got(label)
    env = {
        "RELIABLE_TEST_BROKER": importer.app.conf.broker_url,
        "RELIABLE_TEST_STORE": module_store_url,
    }
    listed = run_reliable(CLI_APP, env, "batch", "list", "--state", "completed", process=True)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0] == "id\tstate\tdone\toutcomes\tdescription\tcreated\tcompleted"
    [row] = [line.split("\t") for line in lines[1:] if line.startswith(batch.id)]
    # Piped: one line per batch, every value whole (its own tab written as \t).
    assert row[1:5] == ["completed", "2/2", "1 succeeded, 1 discarded", "rows\\tof cli"]
    shown = run_reliable(CLI_APP, env, "batch", "show", batch.id)
    assert shown.returncode == 0, shown.stderr
    assert "      state: completed" in shown.stdout
    assert f"{bad.id}\tbt.row\tdiscarded" in shown.stdout.splitlines()
    as_json = json.loads(run_reliable(CLI_APP, env, "batch", "show", batch.id, "--json").stdout)
    assert as_json["batch"]["outcomes"] == counts(succeeded=1, discarded=1)
    missing = run_reliable(CLI_APP, env, "batch", "show", "no-such-batch")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines()[-1] == "Error: no batch 'no-such-batch'"


def test_the_report_of_a_callback_task_says_how_its_batches_stand(
    importer: Importer, worker: Any
) -> None:
    """``celery reliable report`` of a task that is a batch callback: per role, how many
    batches name it, how many fired it, are still waiting, or skipped ``on_success``
    (a member ended badly); the newest one; the same in ``--json``."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from celery_reliable.cli import reliable

    def report(*args: str) -> str:
        done = CliRunner().invoke(
            reliable, ["report", "bt.tally", *args], obj=SimpleNamespace(app=importer.app)
        )
        assert done.exit_code == 0, done.output
        return str(done.output)

    assert "Batch callback" not in report()
    label = key("report")
    both = {"on_complete": importer.tally.s(label), "on_success": importer.tally.s(label)}
    hold = key("hold")
    with Batch(**both, description="all good"):
        importer.row.delay(key("ok"))
    with Batch(**both, description="one bad"):
        importer.row.delay(key("bad"), "discard")
    with Batch(on_complete=importer.tally.s(label), description="held") as held:
        importer.row.delay(hold, "wait")
    importer.wait_got(label, 3)  # both of the good one's, on_complete of the bad one's
    lines = [x for x in report().splitlines() if x.startswith("- Batch callback")]
    data = json.loads(report("--json"))["batch_callback"]
    importer.effects.set(f"release:{hold}", 1)
    importer.wait_got(label, 4)
    created = data[0]["last"]["created_at"]
    assert lines == [
        "- Batch callback: `on_complete` of 3 batches kept: 2 fired, 1 waiting for their last "
        f"member; the newest `{held.id}` ('held'), sealed 0/1, created {created} (its task id "
        f"`{held.id}-on_complete`)",
        "- Batch callback: `on_success` of 2 batches kept: 1 fired, 1 not fired (a member "
        "ended discarded, exhausted or failed); the newest "
        f"`{data[1]['last']['batch']}` ('one bad'), completed 1/1, created "
        f"{data[1]['last']['created_at']}, completed {data[1]['last']['completed_at']} (its "
        f"task id `{data[1]['last']['batch']}-on_success`)",
    ]
    assert [(u["which"], u["batches"], u["fired"], u["skipped"], u["waiting"]) for u in data] == [
        ("on_complete", 3, 2, 0, 1),
        ("on_success", 2, 1, 1, 0),
    ]
    assert data[0]["last"] == {
        "batch": held.id,
        "description": "held",
        "state": "sealed",
        "done": 0,
        "total": 1,
        "created_at": created,
        "completed_at": None,
    }
    # docs/cli.md's example line has the shape of the report's.
    shown = marked_block(DOCS / "cli.md", "report-batch-callback-line", "text").strip()
    uuid_ = r"`[0-9a-f-]+(\.\.\.)?"
    assert re.fullmatch(
        rf"- Batch callback: `on_complete` of \d+ batches kept: \d+ fired, \d+ waiting for "
        rf"their last member; the newest {uuid_}` \('[^']*'\), sealed \d+/\d+, created "
        rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ \(its task id {uuid_}-on_complete`\)",
        shown,
    ), shown
    # Once the held member ended, its batch completed and fired it.
    [complete, _] = json.loads(report("--json"))["batch_callback"]
    assert (complete["fired"], complete["waiting"]) == (3, 0)
    assert complete["last"]["state"] == "completed"


def test_a_member_that_ends_while_the_store_cannot_count_it_is_counted_once_it_can(
    importer: Importer, worker: Any, outcomes: OutcomeRecorder, caplog: Any
) -> None:
    """The last member ends while its end cannot be written: the ending waits in the
    broker's Redis, held by a worker's counter that tries again; once the store
    answers it is counted, the batch completes once, and the member's body ran once.
    (On a broker that is not Redis, the ending waits as a message: test_batches_amqp.)"""
    label, held = key("outage"), key("held")
    with Batch(**callbacks(importer, label)) as batch:
        first = importer.row.delay(key("first"))
        last = importer.row.delay(held, "wait")
    outcomes.wait_for(first.id)
    wait_until(
        lambda: (b := importer.store.batches.get(batch.id)) and b.done == 1,
        "the first member counted",
    )
    caplog.set_level(logging.WARNING, logger="celery_reliable.batches")

    def held_and_said() -> bool:
        said = [r for r in caplog.records if "batch endings not counted yet" in r.getMessage()]
        return bool(said) and last.id in held_endings(importer.app)

    with batch_tables_away(importer.store):
        importer.effects.set(f"release:{held}", 1)
        outcomes.wait_for(last.id)
        wait_until(held_and_said, "the ending held by a counter that could not count it")
    for which in ("complete", "success"):
        (summary,) = importer.wait_got(f"{label}:{which}")
        assert summary["total"] == 2 and summary["outcomes"] == counts(succeeded=2)
    [said] = [r.getMessage() for r in caplog.records if "not counted yet" in r.getMessage()]
    assert "they wait in the broker's Redis and are counted once it answers" in said
    settle(importer.app)
    assert held_endings(importer.app) == []
    assert len(importer.got(f"{label}:complete")) == len(importer.got(f"{label}:success")) == 1
    assert importer.runs(held) == 1, "the body ran once: the ending was counted, not re-run"
    stored_batch = importer.store.batches.get(batch.id)
    assert stored_batch is not None
    assert (stored_batch.state, stored_batch.done, stored_batch.total) == ("completed", 2, 2)
    assert [e.outcome.value for e in outcomes.for_id(last.id)] == ["succeeded"]


def test_a_publish_in_member_whose_transaction_rolled_back_before_the_seal_is_not_one(
    importer: Importer, worker: Any, module_store_url: str
) -> None:
    """Transactions inside the block: the one that rolled back took its member with it;
    the batch completes with the members that were sent."""
    label, gone = key("rolled"), key("gone")
    engine = sa.create_engine(module_store_url)
    try:
        with Batch(**callbacks(importer, label)) as batch:
            sent = importer.row.delay(key("sent"))
            with Session(engine) as session:
                session.begin()
                rolled = publish_in(session, importer.row.s(gone))
                session.rollback()
            with engine.connect() as connection:
                transaction = connection.begin()
                publish_in(connection, importer.row.s(gone))
                transaction.rollback()
            with engine.begin() as connection:
                committed = publish_in(connection, importer.row.s(key("committed")))
    finally:
        engine.dispose()
    for which in ("complete", "success"):
        (summary,) = importer.wait_got(f"{label}:{which}")
        assert summary["total"] == 2 and summary["outcomes"] == counts(succeeded=2)
    settle(importer.app)
    assert importer.runs(gone) == 0
    assert {t for t, _, _ in importer.store.batches.members(batch.id)} == {sent.id, committed.id}
    assert rolled.id in batch.members  # published in the block, whatever became of it


@pytest.mark.parametrize("given", ["session", "connection"])
@pytest.mark.parametrize("end", ["commit", "rollback"])
def test_a_block_inside_the_transaction_of_its_publish_in_members_is_sealed_with_it(
    importer: Importer, worker: Any, module_store_url: str, given: str, end: str
) -> None:
    """The block exits before the transaction ends: the seal is written in it. Committed,
    the batch counts its members; rolled back, it is sealed again without them, and
    completes with the members that were sent."""
    label, in_transaction = key(f"inside-{end}"), key("in-transaction")
    engine = sa.create_engine(module_store_url)
    try:
        with Session(engine) as session, engine.connect() as connection:
            transaction = session.begin() if given == "session" else connection.begin()
            caller = session if given == "session" else connection
            with Batch(**callbacks(importer, label)) as batch:
                importer.row.delay(key("sent"))
                publish_in(caller, importer.row.s(in_transaction))
                publish_in(caller, importer.row.s(in_transaction + "-2"))
            if end == "commit":
                transaction.commit()
            else:
                transaction.rollback()
    finally:
        engine.dispose()
    total = 3 if end == "commit" else 1
    for which in ("complete", "success"):
        (summary,) = importer.wait_got(f"{label}:{which}")
        assert summary["total"] == total and summary["outcomes"] == counts(succeeded=total)
    settle(importer.app)
    assert importer.runs(in_transaction) == (1 if end == "commit" else 0)
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and (stored.state, stored.done, stored.total) == (
        "completed",
        total,
        total,
    )


class Oops(Exception):
    pass


def _savepoint_rolled_back(session: Session) -> None:
    try:
        with session.begin_nested():
            session.execute(sa.text("SELECT 1"))
            raise Oops()
    except Oops:
        pass


def without_hang(engine: sa.Engine, target: Any, timeout: float = 20.0) -> None:
    """``target()`` in a thread: a hang on a lock (PostgreSQL) is cancelled and fails
    the test, instead of hanging the suite."""
    import threading

    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="without-hang", daemon=True)
    thread.start()
    thread.join(timeout)
    hung = thread.is_alive()
    if hung and engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(
                sa.text(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE "
                    "wait_event_type = 'Lock' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            )
        thread.join(timeout)
    if hung:
        pytest.fail(f"hung for {timeout} s waiting on a lock (cancelled)")
    if errors:
        raise errors[0]


@pytest.mark.only_store("postgresql")
def test_a_savepoint_that_rolls_back_after_the_block_neither_hangs_nor_reseals(
    importer: Importer, worker: Any, module_store_url: str
) -> None:
    """A savepoint rolled back in the transaction the batch was sealed in is not the
    transaction's end: nothing is sealed again while it is open (before: the re-seal,
    on another connection, waited forever for the caller's own locks)."""
    label = key("savepoint-hang")
    engine = sa.create_engine(module_store_url)
    batches: list[Batch] = []

    def scenario() -> None:
        with Session(engine) as session, session.begin():
            with Batch(**callbacks(importer, label)) as batch:
                importer.row.delay(key("sent"))
                publish_in(session, importer.row.s(key("in-transaction")))
            _savepoint_rolled_back(session)
            batches.append(batch)

    try:
        without_hang(engine, scenario)
    finally:
        engine.dispose()
    for which in ("complete", "success"):
        (summary,) = importer.wait_got(f"{label}:{which}")
        assert summary["total"] == 2 and summary["outcomes"] == counts(succeeded=2)
    settle(importer.app)
    stored = importer.store.batches.get(batches[0].id)
    assert stored is not None and (stored.state, stored.done, stored.total) == ("completed", 2, 2)


@pytest.mark.parametrize("end", ["savepoint-then-rollback", "close", "savepoint-rolled-back"])
def test_the_root_transaction_s_end_is_what_reseals_a_session_s_batch(
    importer: Importer, worker: Any, module_store_url: str, end: str
) -> None:
    """A savepoint's commit is not the transaction's (a later rollback still seals the
    batch again), nor a savepoint's rollback; a session closed without a commit rolls
    back, and seals it again too."""
    label, gone = key(f"root-{end}"), key("gone")
    engine = sa.create_engine(module_store_url)
    batches: list[Batch] = []

    def scenario() -> None:
        with Session(engine) as session:
            session.begin()
            with Batch(**callbacks(importer, label)) as batch:
                importer.row.delay(key("sent"))
                publish_in(session, importer.row.s(gone))
            batches.append(batch)
            if end == "savepoint-then-rollback":
                with session.begin_nested():
                    session.execute(sa.text("SELECT 1"))
                session.rollback()
            elif end == "savepoint-rolled-back":
                _savepoint_rolled_back(session)
                session.rollback()
            # "close": the session closes with its transaction open

    try:
        without_hang(engine, scenario)
    finally:
        engine.dispose()
    [batch] = batches
    for which in ("complete", "success"):
        (summary,) = importer.wait_got(f"{label}:{which}")
        assert summary["total"] == 1 and summary["outcomes"] == counts(succeeded=1)
    settle(importer.app)
    assert importer.runs(gone) == 0
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and (stored.state, stored.done, stored.total) == ("completed", 1, 1)


def test_a_long_lived_connection_keeps_no_listener_per_batch(
    importer: Importer, worker: Any, module_store_url: str
) -> None:
    """Batches sealed in the committed transactions of one connection: what it would
    call on a rollback is dropped at each commit, not kept once per batch."""
    labels = [key("long-lived") for _ in range(3)]
    engine = sa.create_engine(module_store_url)
    try:
        with engine.connect() as connection:
            for label in labels:
                transaction = connection.begin()
                with Batch(on_complete=importer.collect.s(label)):
                    publish_in(connection, importer.row.s(key("r")))
                transaction.commit()
            assert len(connection.dispatch.rollback) <= 1
            assert len(connection.dispatch.commit) <= 1
    finally:
        engine.dispose()
    for label in labels:
        (summary,) = importer.wait_got(label)
        assert summary["total"] == 1


@pytest.mark.only_store("postgresql")
def test_a_block_that_aborted_its_transaction_raises_its_own_error(
    importer: Importer, worker: Any, module_store_url: str
) -> None:
    """The block's statement failed (PostgreSQL aborts the transaction): its error is
    the one raised, and the batch is abandoned on the store's own connection (before:
    the abandoned seal, in the aborted transaction, raised instead)."""
    label, gone = key("aborted"), key("gone")
    engine = sa.create_engine(module_store_url)
    try:
        with (
            pytest.raises(sa.exc.DataError),
            Session(engine) as session,
            session.begin(),
            Batch(**callbacks(importer, label)) as batch,
        ):
            sent = importer.row.delay(key("sent"))
            publish_in(session, importer.row.s(gone))
            session.execute(sa.text("SELECT 1/0"))
    finally:
        engine.dispose()
    wait_until(
        lambda: (b := importer.store.batches.get(batch.id)) and b.done == 1,
        "the member sent counted",
    )
    settle(importer.app)
    stored = importer.store.batches.get(batch.id)
    assert stored is not None and (stored.state, stored.total) == ("abandoned", 1)
    assert {t for t, _, _ in importer.store.batches.members(batch.id)} == {sent.id}
    assert importer.runs(gone) == 0
    assert importer.got(f"{label}:complete") == importer.got(f"{label}:success") == []


def test_a_publish_in_that_raised_after_its_capture_is_not_a_member(
    importer: Importer, worker: Any, module_store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """publish_in captured the message (the batch counted it), then failed to write it:
    it was never sent, so it is not a member and the batch completes without it."""
    from celery_reliable.outbox import publish as publishing

    def refused(*_: Any) -> None:
        raise sa.exc.OperationalError("INSERT", {}, Exception("the members' rows refused"))

    label, gone = key("raised"), key("gone")
    engine = sa.create_engine(module_store_url)
    try:
        with Batch(**callbacks(importer, label)) as batch:
            sent = importer.row.delay(key("sent"))
            monkeypatch.setattr(publishing, "write_members_in", refused)
            with pytest.raises(sa.exc.OperationalError), engine.begin() as connection:
                publish_in(connection, importer.row.s(gone))
            monkeypatch.undo()
    finally:
        engine.dispose()
    assert batch.members == [sent.id]
    for which in ("complete", "success"):
        (summary,) = importer.wait_got(f"{label}:{which}")
        assert summary["total"] == 1 and summary["outcomes"] == counts(succeeded=1)
    settle(importer.app)
    assert importer.runs(gone) == 0
