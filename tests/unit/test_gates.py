"""The production-readiness gates as a library call: each gate missed for the reason it
names, waivers, the JSON shape. (The command line is tested in test_cli_gates.)"""

from __future__ import annotations

import re
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured
from celery.schedules import crontab

from celery_reliable import Outcome, ReliableTask, cancel_on, discard_on, retry_on
from celery_reliable.audit.gates import (
    PROJECT,
    PROJECT_GATES,
    GateResult,
    Status,
    check,
    format_seconds,
)
from celery_reliable.audit.reports import build_report
from celery_reliable.backoff import exponential, fixed, polynomial
from celery_reliable.errors import UnknownTask
from celery_reliable.limits import concurrency, rate
from celery_reliable.options import GATES
from celery_reliable.policy import make_retry_rule, retry_schedule
from celery_reliable.testing import perform_task

# Each test's app audits only the tasks the test defines.
pytestmark = pytest.mark.usefixtures("no_shared_tasks")


class Transient(Exception):
    pass


class Permanent(Exception):
    pass


GOOD = {
    "base": ReliableTask,
    "timeout": 30,
    "idempotency_key": "k:{x}",
    "acks_late": True,
    "reject_on_worker_lost": True,
    "shared": False,  # a shared task would join every app built after it
}


def make_app(broker: str = "redis://127.0.0.1:1/0", **conf: Any) -> Celery:
    app = Celery("gates", broker=broker, set_as_current=False)
    app.conf.reliable_database_url = None
    app.conf.reliable_statsd_host = "127.0.0.1"
    app.conf.update(conf)
    return app


def good_task(app: Celery, name: str = "t.good", **options: Any) -> Any:
    @app.task(name=name, **{**GOOD, **options})
    @retry_on(Transient, attempts=5)
    @discard_on(Permanent)
    def task(x: int) -> int:
        return x

    return task


def gate(app: Celery, name: str, gate_name: str) -> Any:
    return check(app, task=name).task(name).gate(gate_name)


def test_a_task_that_meets_every_gate_passes() -> None:
    # Sentry off: a warning (whether another test initialised the SDK or not).
    app = make_app(reliable_sentry=False)
    good_task(app)
    findings = check(app)
    audit = findings.task("t.good")
    statuses = {result.gate: result.status for result in audit.gates}
    assert statuses == {**dict.fromkeys(GATES, Status.PASS), "sentry": Status.WARN}
    assert audit.passed and findings.passed and findings.misses() == []


def test_classified_misses_without_declarations_and_passes_under_unclassified_retry() -> None:
    app = make_app()

    @app.task(name="t.bare", **GOOD)
    def bare(x: int) -> int:
        return x

    result = gate(app, "t.bare", "classified")
    assert result.status is Status.MISS
    assert "no retry_on/discard_on/cancel_on" in result.reason
    assert not check(app).passed

    lenient = make_app(reliable_unclassified="retry")
    lenient.task(name="t.bare", **GOOD)(bare.run)
    result = gate(lenient, "t.bare", "classified")
    assert result.status is Status.PASS
    assert "reliable_unclassified='retry'" in result.reason


def test_cancel_on_alone_classifies() -> None:
    app = make_app()

    @app.task(name="t.cancel", **GOOD)
    @cancel_on(Permanent)
    def task(x: int) -> None: ...

    assert gate(app, "t.cancel", "classified").status is Status.PASS


def test_declarations_on_a_plain_task_miss_classified() -> None:
    app = make_app()

    @app.task(name="t.plain", shared=False)
    @retry_on(Transient)
    def plain(x: int) -> None: ...

    @app.task(name="t.untouched", shared=False)
    def untouched() -> None: ...

    findings = check(app)
    audit = findings.task("t.plain")
    assert not audit.reliable
    assert audit.gate("classified").status is Status.MISS
    assert "is not a ReliableTask" in audit.gate("classified").reason
    assert findings.not_reliable == ("t.untouched",)


def test_bounded_misses_a_delay_that_does_not_grow() -> None:
    app = make_app()

    @app.task(name="t.storm", **GOOD)
    @retry_on(Transient, wait=fixed(2), attempts=10)
    def storm(x: int) -> None: ...

    result = gate(app, "t.storm", "bounded")
    assert result.status is Status.MISS
    assert "the delay does not grow" in result.reason
    assert "9 retries 2s apart" in result.reason


def test_bounded_allows_a_single_retry_at_a_fixed_delay() -> None:
    app = make_app()

    @app.task(name="t.once", **GOOD)
    @retry_on(Transient, wait=fixed(30), attempts=2)
    def once(x: int) -> None: ...

    assert gate(app, "t.once", "bounded").status is Status.PASS


def test_bounded_misses_a_window_longer_than_the_message_lives() -> None:
    app = make_app()

    @app.task(name="t.expiring", expires=60, **GOOD)
    @retry_on(Transient, wait=exponential(), attempts=8)
    def expiring(x: int) -> None: ...

    result = gate(app, "t.expiring", "bounded")
    assert result.status is Status.MISS
    assert "longer than expires=1m" in result.reason


def test_bounded_misses_a_wait_that_cannot_be_planned() -> None:
    app = make_app()

    def from_header(attempt: int, exc: BaseException) -> float:
        return float(exc.response.headers["Retry-After"])  # type: ignore[attr-defined]

    @app.task(name="t.opaque", **GOOD)
    @retry_on(Transient, wait=from_header, attempts=3)
    def opaque(x: int) -> None: ...

    audit = check(app).task("t.opaque")
    assert audit.gate("bounded").status is Status.MISS
    assert "cannot be computed ahead" in audit.gate("bounded").reason
    assert audit.retry_window is None


def test_retry_window_is_the_sum_of_the_longest_delays() -> None:
    app = make_app()

    @app.task(name="t.two", **GOOD)
    @retry_on(Transient, wait=exponential(), attempts=4)  # 1, 2, 4 s
    @retry_on(KeyError, wait=polynomial(), attempts=3, jitter=False)  # 3, 18 s
    def two(x: int) -> None: ...

    window = check(app).task("t.two").retry_window
    assert window == pytest.approx((1 + 2 + 4) * 1.15 + 3 + 18)


def test_retry_schedule_gives_jitters_range() -> None:
    rule = make_retry_rule([Transient], wait=exponential(cap=4), attempts=5)
    steps = retry_schedule(rule)
    assert [s.attempt for s in steps] == [1, 2, 3, 4]
    assert [s.min_delay for s in steps] == [1, 2, 4, 4]
    assert [s.max_delay for s in steps] == pytest.approx([1.15, 2.3, 4.6, 4.6])


def test_idempotency_misses_without_a_key_and_a_waiver_shows_its_reason() -> None:
    app = make_app()
    good_task(app, "t.keyless", idempotency_key=None)
    result = gate(app, "t.keyless", "idempotency")
    assert result.status is Status.MISS
    assert "no idempotency_key" in result.reason

    waived = make_app()
    good_task(waived, "t.keyless", idempotency_key=None, waive={"idempotency": "read-only"})
    result = gate(waived, "t.keyless", "idempotency")
    assert result.status is Status.WAIVED and result.reason == "read-only"
    assert check(waived).passed


def test_a_waiver_of_a_gate_that_passes_says_it_is_not_needed() -> None:
    app = make_app()
    good_task(app, waive={"timeout": "legacy"})
    result = gate(app, "t.good", "timeout")
    assert result.status is Status.PASS
    assert result.reason.endswith("(waiver not needed)")


def test_timeout_misses_without_limits_and_app_limits_count() -> None:
    app = make_app()
    good_task(app, "t.slow", timeout=None, idempotency_key=None, waive={"idempotency": "pure"})
    result = gate(app, "t.slow", "timeout")
    assert result.status is Status.MISS and "no timeout" in result.reason

    limited = make_app(task_time_limit=120)
    good_task(limited, "t.slow", timeout=None, idempotency_key=None, waive={"idempotency": "pure"})
    result = gate(limited, "t.slow", "timeout")
    assert result.status is Status.PASS and "hard 2m" in result.reason


def test_timeout_misses_a_soft_limit_above_the_hard_one() -> None:
    """An app-wide soft limit above one task's own hard limit: Celery refuses to publish
    the task again (its retries and snoozes), so the gate says so."""
    app = make_app(task_soft_time_limit=100)
    good_task(app, "t.short", timeout=None, time_limit=8)
    result = gate(app, "t.short", "timeout")
    assert result.status is Status.MISS, result
    assert "soft time limit 1m 40s is above the hard 8s" in result.reason, result.reason
    assert "set timeout=N" in result.reason

    equal = make_app(task_soft_time_limit=100)
    good_task(equal, "t.short", timeout=None, soft_time_limit=8, time_limit=8)
    assert gate(equal, "t.short", "timeout").status is Status.PASS


def test_delivery_needs_late_acks_for_idempotent_tasks() -> None:
    app = make_app()
    good_task(app, "t.early", acks_late=False)
    result = gate(app, "t.early", "delivery")
    assert result.status is Status.MISS and "acks_late is off" in result.reason

    app = make_app()
    good_task(app, "t.lost", reject_on_worker_lost=False)
    result = gate(app, "t.lost", "delivery")
    assert result.status is Status.MISS and "reject_on_worker_lost is off" in result.reason

    app = make_app(task_acks_late=True, task_reject_on_worker_lost=True)
    good_task(app, "t.app_wide", acks_late=None, reject_on_worker_lost=None)
    assert gate(app, "t.app_wide", "delivery").status is Status.PASS


def test_delivery_misses_a_time_limit_past_the_visibility_timeout() -> None:
    app = make_app(broker_transport_options={"visibility_timeout": 20}, reliable_keepalive=False)
    good_task(app, "t.long", timeout=60)
    result = gate(app, "t.long", "delivery")
    assert result.status is Status.MISS
    assert "hard time limit 1m 6s is not shorter than the visibility_timeout 20s (redis)" in (
        result.reason
    )

    kept_alive = make_app(broker_transport_options={"visibility_timeout": 20})
    good_task(kept_alive, "t.long", timeout=60)
    result = gate(kept_alive, "t.long", "delivery")
    assert result.status is Status.PASS
    assert "kept alive past the redis visibility_timeout 20s (reliable_keepalive)" in result.reason

    on_sqs = make_app(broker="sqs://", broker_transport_options={"visibility_timeout": 20})
    good_task(on_sqs, "t.long", timeout=60)
    assert gate(on_sqs, "t.long", "delivery").status is Status.MISS  # no keepalive there

    on_rabbitmq = make_app(broker="amqp://127.0.0.1:1//")
    good_task(on_rabbitmq, "t.long", timeout=60)
    assert gate(on_rabbitmq, "t.long", "delivery").status is Status.PASS


def test_delivery_misses_a_countdown_past_the_visibility_timeout() -> None:
    app = make_app(broker_transport_options={"visibility_timeout": 600}, reliable_keepalive=False)

    @app.task(name="t.patient", **GOOD)
    @retry_on(Transient, wait=exponential(cap=3600), attempts=12)
    def patient(x: int) -> None: ...

    result = gate(app, "t.patient", "delivery")
    assert result.status is Status.MISS
    assert "longest retry delay 19m 38s is not shorter than the visibility_timeout 10m" in (
        result.reason
    )


def test_metrics_misses_without_statsd() -> None:
    app = make_app(reliable_statsd_host=None)
    good_task(app)
    result = gate(app, "t.good", "metrics")
    assert result.status is Status.MISS and "reliable_statsd_host is not set" in result.reason


def test_sentry_is_a_warning_never_a_miss() -> None:
    app = make_app(reliable_sentry=False)
    good_task(app)
    findings = check(app)
    assert findings.task("t.good").gate("sentry").status is Status.WARN
    assert findings.passed


def test_unknown_task_names_the_known_ones() -> None:
    app = make_app()
    good_task(app, "shop.charge")
    with pytest.raises(
        UnknownTask, match=r"no task named 'shop.chrage'; did you mean 'shop.charge'"
    ):
        check(app, task="shop.chrage")


def test_an_unknown_gate_in_waive_fails_when_the_class_is_built() -> None:
    app = make_app()
    with pytest.raises(ValueError, match=r"unknown gate 'idempotence'; did you mean 'idempotency'"):

        @app.task(name="t.typo", base=ReliableTask, shared=False, waive={"idempotence": "safe"})
        def typo() -> None: ...

        typo.run  # noqa: B018 - binding the lazy task builds its class


def test_a_waiver_needs_a_reason() -> None:
    with pytest.raises(ValueError, match=r"waive\['timeout'\] needs a reason"):

        class NoReason(ReliableTask):
            waive = {"timeout": " "}


def test_waivers_are_inherited_and_merged() -> None:
    class Base(ReliableTask):
        waive = {"metrics": "batch jobs report elsewhere"}

    class Child(Base):
        waive = {"idempotency": "pure"}

    assert Child._reliable_waivers == {
        "metrics": "batch jobs report elsewhere",
        "idempotency": "pure",
    }


def test_json_shape() -> None:
    app = make_app()
    good_task(app)
    data = check(app).to_dict()
    assert data["gates"] == list(GATES)
    [task] = data["tasks"]
    assert set(task) == {"task", "reliable_task", "passed", "retry_window", "gates"}
    assert task["gates"]["timeout"] == {
        "status": "pass",
        "reason": "time limits: soft 30s, hard 35s",
    }


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.5, "0.5s"), (45, "45s"), (66, "1m 6s"), (3600, "1h"), (93784, "1d 2h")],
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_an_app_wide_time_limit_serves_an_idempotency_key() -> None:
    # Celery 5.4 leaves the app's task_time_limit off the task; the lease still uses it.
    from celery_reliable.claims import lease_seconds

    app = make_app(task_time_limit=60)
    good_task(app, "t.keyed", timeout=None)
    task = app.tasks["t.keyed"]
    assert task._reliable_lease == lease_seconds(60)
    assert check(app).task("t.keyed").gate("timeout").reason == "time limits: hard 1m"


# ------------------------------------------------- project-level facts (issue 17, point 4)


def test_project_level_gates_are_found_once_for_the_app() -> None:
    # No StatsD and Sentry off are facts of the app, not of each task.
    app = make_app(reliable_statsd_host=None, reliable_sentry=False)
    good_task(app, "t.one")
    good_task(app, "t.two")
    findings = check(app)
    metrics, sentry = findings.project
    assert metrics == GateResult(
        "metrics",
        Status.MISS,
        "reliable_statsd_host is not set: no outcome counters or durations reach a dashboard",
        scope="project",
    )
    assert sentry == GateResult(
        "sentry", Status.WARN, "reliable_sentry is False: no error reports", scope="project"
    )
    assert findings.misses() == [(PROJECT, metrics)]
    assert not findings.passed
    for name in ("t.one", "t.two"):
        audit = findings.task(name)
        assert [r.gate for r in audit.own] == [g for g in GATES if g not in PROJECT_GATES]
        assert audit.passed  # every gate of its own
        assert audit.gate("metrics") is metrics  # the library still answers for every gate

    data = findings.to_dict()
    assert data["project"] == {
        "gates": {
            "metrics": {"status": "miss", "reason": metrics.reason},
            "sentry": {"status": "warn", "reason": sentry.reason},
        },
        "waivers": {},
    }
    assert [set(task["gates"]) for task in data["tasks"]] == [
        {"classified", "bounded", "idempotency", "timeout", "delivery"}
    ] * 2


def test_a_task_that_waives_a_project_gate_itself_keeps_its_own_line() -> None:
    app = make_app(reliable_statsd_host=None, reliable_sentry=False)
    good_task(app, "t.batch", waive={"metrics": "reports to the warehouse"})
    good_task(app, "t.plain")
    findings = check(app)
    batch = findings.task("t.batch")
    assert batch.gate("metrics") == GateResult(
        "metrics", Status.WAIVED, "reports to the warehouse", waived_by="waive"
    )
    assert batch.gate("metrics") in batch.own
    # t.plain still relies on the app's StatsD: the project misses it.
    assert [(task, r.gate) for task, r in findings.misses()] == [(PROJECT, "metrics")]

    alone = make_app(reliable_statsd_host=None, reliable_sentry=False)
    good_task(alone, "t.batch", waive={"metrics": "reports to the warehouse"})
    findings = check(alone)
    # No task takes the app's metrics finding: no project line for it.
    assert [r.gate for r in findings.project] == ["sentry"]
    assert findings.passed


def test_an_app_wide_waiver_is_shown_as_such_and_a_task_waiver_wins() -> None:
    app = make_app(
        reliable_statsd_host=None,
        reliable_sentry=False,
        reliable_waive={
            "metrics": "dashboards come from the outcome log",
            "idempotency": "every task here only reads",
        },
    )
    good_task(app, "t.keyless", idempotency_key=None)
    good_task(app, "t.own", idempotency_key=None, waive={"idempotency": "a pure function"})
    good_task(app, "t.keyed")
    findings = check(app)
    assert findings.passed, findings.misses()
    assert findings.project[0] == GateResult(
        "metrics",
        Status.WAIVED,
        "reliable_waive (app-wide): dashboards come from the outcome log",
        waived_by="reliable_waive",
        scope="project",
    )
    assert findings.task("t.keyless").gate("idempotency") == GateResult(
        "idempotency",
        Status.WAIVED,
        "reliable_waive (app-wide): every task here only reads",
        waived_by="reliable_waive",
    )
    assert findings.task("t.own").gate("idempotency").reason == "a pure function"
    # A task that meets the gate says nothing of the app's waiver.
    assert findings.task("t.keyed").gate("idempotency").reason == "idempotency_key k:{x}"

    data = findings.to_dict()
    assert data["project"]["waivers"] == {
        "metrics": "dashboards come from the outcome log",
        "idempotency": "every task here only reads",
    }
    assert data["project"]["gates"]["metrics"] == {
        "status": "waived",
        "reason": "reliable_waive (app-wide): dashboards come from the outcome log",
        "waived_by": "reliable_waive",
    }
    by_name = {task["task"]: task for task in data["tasks"]}
    assert by_name["t.own"]["gates"]["idempotency"] == {
        "status": "waived",
        "reason": "a pure function",
        "waived_by": "waive",
    }


def test_an_app_wide_waiver_of_a_project_gate_that_passes_is_not_needed() -> None:
    app = make_app(reliable_waive={"metrics": "no dashboards yet"})
    good_task(app)
    metrics = check(app).project[0]
    assert metrics.status is Status.PASS
    assert metrics.reason == "StatsD 127.0.0.1:8125, prefix 'celery' (reliable_waive not needed)"


@pytest.mark.parametrize(
    ("waive", "message"),
    [
        (
            {"metric": "no dashboards"},
            "reliable_waive names an unknown gate 'metric'; did you mean 'metrics'? the gates "
            "are classified, bounded, idempotency, timeout, delivery, metrics, sentry",
        ),
        ({"metrics": " "}, "reliable_waive['metrics'] needs a reason"),
        ("metrics", "reliable_waive must be a dict of gate -> reason"),
    ],
)
def test_an_app_wide_waiver_is_checked_like_a_task_waiver(waive: object, message: str) -> None:
    app = make_app(reliable_waive=waive)
    good_task(app)
    with pytest.raises(ImproperlyConfigured, match=re.escape(message)):
        check(app)


# --------------------------------------------------- Celery's own autoretry_for


def legacy_task(app: Celery, name: str, **options: Any) -> Any:
    """A task moved to base=ReliableTask with Celery's retry options left as they were."""

    @app.task(name=name, **{**GOOD, **options})
    def task(x: int) -> int:
        return x

    return task


def test_autoretry_for_classifies_and_is_bounded_by_max_retries() -> None:
    app = make_app()
    legacy_task(app, "t.legacy", autoretry_for=(Exception,), retry_backoff=True)
    audit = check(app).task("t.legacy")
    assert audit.gate("classified") == GateResult(
        "classified", Status.PASS, "1 rule (autoretry_for)"
    )
    # Celery's default max_retries=3: 3 retries after 1, 2 and 4 s at most (its full
    # jitter draws between 0 and each).
    assert audit.gate("bounded") == GateResult(
        "bounded",
        Status.PASS,
        "attempts 4 (autoretry_for, max_retries=3), worst-case retry window 7s",
    )
    assert audit.retry_window == 7
    assert audit.passed


def test_autoretry_for_without_max_retries_is_unbounded() -> None:
    app = make_app()
    legacy_task(
        app, "t.forever", autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=None
    )
    audit = check(app).task("t.forever")
    assert audit.gate("bounded").status is Status.MISS
    assert audit.gate("bounded").reason.startswith(
        "autoretry_for(ConnectionError, max_retries=None, retry_backoff=1, "
        "retry_backoff_max=600, retry_jitter=True): max_retries=None, so Celery retries "
        "these errors forever"
    )
    assert audit.retry_window is None


def test_retry_kwargs_max_retries_is_the_budget_celery_uses() -> None:
    app = make_app()
    legacy_task(
        app,
        "t.kwargs",
        autoretry_for=(ConnectionError,),
        retry_backoff=2,
        retry_jitter=False,
        retry_kwargs={"max_retries": 5},
    )
    audit = check(app).task("t.kwargs")
    assert audit.gate("bounded").reason == (
        "attempts 6 (autoretry_for, max_retries=5), worst-case retry window 1m 2s"
    )  # 2 + 4 + 8 + 16 + 32 s
    assert audit.retry_window == 62


def test_autoretry_for_at_a_fixed_countdown_does_not_grow() -> None:
    app = make_app()
    legacy_task(app, "t.storm", autoretry_for=(ConnectionError,), retry_kwargs={"countdown": 10})
    result = gate(app, "t.storm", "bounded")
    assert result.status is Status.MISS
    assert result.reason.startswith(
        "autoretry_for(ConnectionError, max_retries=3, countdown=10s): the delay does not "
        "grow (3 retries 10s apart keep hitting what is down); set retry_backoff=True"
    )

    once = make_app()
    legacy_task(once, "t.once", autoretry_for=(ConnectionError,), max_retries=1)
    assert gate(once, "t.once", "bounded").status is Status.PASS
    assert check(once).task("t.once").retry_window == 180  # Celery's default_retry_delay


def test_autoretry_for_beside_rules_adds_to_the_window() -> None:
    app = make_app()

    @app.task(
        name="t.both",
        autoretry_for=(ConnectionError,),
        retry_backoff=True,
        max_retries=2,
        **GOOD,
    )
    @retry_on(Transient, attempts=3)
    def both(x: int) -> None: ...

    audit = check(app).task("t.both")
    assert audit.gate("classified").reason == "2 rules (autoretry_for, retry_on)"
    assert audit.gate("bounded").reason.startswith(
        "attempts 3+3 (autoretry_for, max_retries=2), worst-case retry window"
    )
    assert audit.retry_window == pytest.approx((1 + 2) * 1.15 + (1 + 2))


def test_a_long_autoretry_backoff_misses_delivery_past_the_visibility_timeout() -> None:
    app = make_app(broker_transport_options={"visibility_timeout": 300}, reliable_keepalive=False)
    legacy_task(
        app, "t.patient", autoretry_for=(ConnectionError,), retry_backoff=True, max_retries=10
    )
    result = gate(app, "t.patient", "delivery")
    assert result.status is Status.MISS
    assert "longest retry delay 8m 32s is not shorter than the visibility_timeout 5m" in (
        result.reason
    )


def test_the_report_lists_autoretry_for_as_a_rule() -> None:
    app = make_app()
    legacy_task(
        app,
        "t.legacy",
        autoretry_for=(ConnectionError,),
        dont_autoretry_for=(ConnectionRefusedError,),
        retry_backoff=True,
        retry_jitter=False,
        max_retries=2,
    )
    report = build_report(app, "t.legacy", with_store=False)
    assert report.rules[0] == {
        "kind": "autoretry_for",
        "classes": ["ConnectionError"],
        "excluded": ["ConnectionRefusedError"],
        "attempts": 3,
        "max_retries": 2,
        "wait": "retry_backoff=1, retry_backoff_max=600, retry_jitter=False",
        "jitter": False,
        "report": False,
        "schedule": [{"attempt": 1, "min": 1, "max": 1}, {"attempt": 2, "min": 2, "max": 2}],
    }
    text = report.markdown()
    for line in (
        "- Retried by Celery first (autoretry_for, max_retries=2), then EXHAUSTED unless a "
        "rule takes over: `ConnectionError` (not `ConnectionRefusedError`)",
        "`ConnectionError` (autoretry_for): 3 attempts, retry_backoff=1, "
        "retry_backoff_max=600, retry_jitter=False",
        "| 2 | 2s | 2s |",
        "| classified | pass | 1 rule (autoretry_for) |",
    ):
        assert line in text, text


def test_the_audit_of_autoretry_for_counts_the_executions_a_worker_makes() -> None:
    app = make_app()

    @app.task(
        name="t.flaky",
        autoretry_for=(Exception,),
        retry_backoff=True,
        max_retries=2,
        **{**GOOD, "idempotency_key": None, "waive": {"idempotency": "pure"}},
    )
    def flaky(x: int) -> None:
        raise KeyError(x)

    assert gate(app, "t.flaky", "bounded").reason.startswith(
        "attempts 3 (autoretry_for, max_retries=2)"
    )
    done = [perform_task(flaky, args=(1,), attempt=n) for n in (1, 2, 3)]
    assert [d.outcome for d in done] == [Outcome.RETRIED, Outcome.RETRIED, Outcome.EXHAUSTED]
    # Celery's full jitter: each delay between 0 and the backoff (1 s, then 2 s).
    assert [0 <= d.retry_in <= limit for d, limit in zip(done, (1, 2), strict=False)] == [
        True,
        True,
    ]


def test_a_long_time_limit_without_a_heartbeat_is_a_warning() -> None:
    app = Celery("long-limits", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = None

    @app.task(base=ReliableTask, name="long.silent", timeout=3600, shared=False)
    def silent() -> None:
        return None

    @app.task(
        base=ReliableTask, name="long.beating", timeout=3600, heartbeat_timeout=30, shared=False
    )
    def beating() -> None:
        return None

    @app.task(base=ReliableTask, name="long.short", timeout=60, shared=False)
    def short() -> None:
        return None

    found = check(app)
    gate = {
        name: found.task(name).gate("timeout")
        for name in ("long.silent", "long.beating", "long.short")
    }
    assert gate["long.silent"].status is Status.WARN
    assert "no heartbeat_timeout" in gate["long.silent"].reason
    assert "long-tasks" in gate["long.silent"].reason
    assert gate["long.beating"].status is Status.PASS
    assert "heartbeat_timeout 30s" in gate["long.beating"].reason
    assert gate["long.short"].status is Status.PASS
    # A warning never fails check.
    assert not [r for _, r in found.misses() if r.gate == "timeout"]


def test_the_report_names_a_tasks_heartbeat_lease_and_steps() -> None:
    app = make_app()

    @app.task(
        name="t.import",
        bind=True,
        heartbeat_timeout=10,
        limits=[concurrency(2, key="imports"), rate(10, per=60)],
        **{**GOOD, "timeout": 3600},
    )
    @retry_on(Transient, attempts=5)
    @discard_on(Permanent)
    def import_rows(self: Any, x: int) -> int:
        with self.step("validate"):
            pass
        name = "computed"
        with self.step(name):  # not a literal: not known before it runs
            pass
        with self.step("rows") as step:
            step.advance(x)
        return x

    report = build_report(app, "t.import", with_store=False)
    assert report.design["heartbeat"] == {"heartbeat_timeout": 10, "grace": 10, "lease": 25}
    assert report.design["steps"] == ["validate", "rows"]
    assert report.design["limits"] == ["concurrency(2, key='imports')", "rate(10, per=60)"]
    text = report.markdown()
    assert (
        "- Heartbeat: heartbeat_timeout=10s: a silent body gets HeartbeatTimeout after 10s, "
        "and on prefork its process is killed 10s later; its key's lease is 25s, renewed by "
        "each beat\n"
    ) in text
    assert (
        "- Steps: `validate`, `rows` (a finished step is skipped when the job runs again)\n" in text
    )
    good_task(app)
    assert build_report(app, "t.good", with_store=False).design["steps"] == []


def test_the_report_shows_the_periodic_entries_publishing_the_task() -> None:
    app = make_app(
        beat_scheduler="celery_reliable.beat:Scheduler",
        beat_schedule={
            "good-every-10s": {"task": "t.good", "schedule": 10.0},
            "other": {"task": "t.other", "schedule": 5.0},
            "good-hourly": {"task": "t.good", "schedule": crontab(minute=15)},
        },
    )
    good_task(app)
    report = build_report(app, "t.good", with_store=False)
    assert [entry["entry"] for entry in report.periodic] == ["good-every-10s", "good-hourly"]
    hourly = report.periodic[1]
    assert hourly["schedule"] == "crontab 15 * * * * (UTC)"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:15:00\.000000Z", hourly["next_due"])
    text = report.markdown()
    assert "- Periodic: `good-every-10s`, every 10 s (aligned to the epoch, UTC): no run " in text
    assert f"recorded; next due {report.periodic[0]['next_due']}" in text
    assert report.to_dict()["periodic"] == report.periodic
    # Another scheduler records no run: the report says so instead of "no run".
    app.conf.beat_scheduler = "celery.beat:PersistentScheduler"
    other = build_report(app, "t.good", with_store=False).markdown()
    assert "runs not recorded (beat_scheduler is not celery_reliable.beat:Scheduler)" in other


def test_a_callback_line_whose_newest_batch_was_pruned_meanwhile_ends_after_its_counts() -> None:
    from celery_reliable.audit.reports import batch_callback_line

    use = {"which": "on_complete", "batches": 2, "fired": 2, "skipped": 0}
    use |= {"waiting": 0, "abandoned": 0, "last": None}
    assert batch_callback_line(use) == "- Batch callback: `on_complete` of 2 batches kept: 2 fired"
