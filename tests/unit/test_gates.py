"""The production-readiness gates as a library call: each gate missed for the reason it
names, waivers, the JSON shape. (The command line is tested in test_cli_gates.)"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_reliable import ReliableTask, cancel_on, discard_on, retry_on
from celery_reliable.backoff import exponential, fixed, polynomial
from celery_reliable.errors import UnknownTask
from celery_reliable.gates import Status, check, format_seconds
from celery_reliable.options import GATES
from celery_reliable.policy import make_retry_rule, retry_schedule

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
