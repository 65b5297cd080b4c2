"""The Graphite dashboard and alerts against the real pipeline: a real worker's StatsD
packets go through the reference StatsD daemon (npm) into carbon-cache, and every
query of docs/grafana/celery-reliable-graphite.json and graphite-alerts.yaml is run
by graphite-web's render API. Each must return data, the counts must add up to the
executions the worker ran, and each alert's condition (Grafana's reduce ``last`` and
threshold, evaluated here) must fire exactly where the data say it should."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from celery_reliable import Outcome, ReliableTask
from celery_reliable.results import wait_for_outcome
from tests.helpers import every_outcome_tasks, new_key
from tests.support.metrics_pipeline import FLUSH_SECONDS, Pipeline, graphite_pipeline
from tests.support.waiting import wait_until
from tests.support.workers import embedded_worker

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"
DASHBOARD = json.loads((GRAFANA / "celery-reliable-graphite.json").read_text())
ALERTS = yaml.safe_load((GRAFANA / "graphite-alerts.yaml").read_text())
OUTCOMES = tuple(outcome.value for outcome in Outcome)


def dashboard_targets() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "target" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(DASHBOARD["panels"])
    return found


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in ALERTS["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def pipeline() -> Iterator[Pipeline]:
    with graphite_pipeline() as running:
        yield running


@pytest.fixture(scope="module")
def ran(make_app: Any, pipeline: Pipeline) -> Iterator[SimpleNamespace]:
    """Every outcome, through a real worker, into the pipeline; one execution is still
    running (held) while the tests read."""
    app = make_app(
        "pipeline",
        reliable_statsd_host="127.0.0.1",
        reliable_statsd_port=pipeline.statsd_port,
        reliable_queue_depth_interval=0.5,
    )
    release = threading.Event()

    # Retries wait 1 s, not less: Celery stores RETRY after the retry is published,
    # so a retry that ends within a few milliseconds can see its FAILURE overwritten
    # by the RETRY of the run before it (Celery's own race, any task class).
    tasks = every_outcome_tasks(app, "p", wait=1)
    ok, flaky, exhausts = tasks.ok, tasks.flaky, tasks.exhausts
    explicit, charge = tasks.explicit, tasks.charge

    @app.task(base=ReliableTask, shared=False, name="p.held")
    def held() -> str:
        release.wait(120)
        return "released"

    with embedded_worker(app, concurrency=4):
        results = [
            ok.delay(),
            ok.delay(),
            flaky.delay(new_key()),
            exhausts.delay(),
            explicit.delay("cancel", new_key()),
            explicit.delay("discard", new_key()),
            explicit.delay("snooze", new_key()),
            explicit.delay("fail", new_key()),
        ]
        order = new_key()
        results.append(charge.delay(order))
        results[-1].get(timeout=30)
        results.append(charge.delay(order))  # DUPLICATE
        for result in results:
            wait_for_outcome(result, timeout=30)
        still_running = held.delay()
        expected = {
            "p_ok": {"started": 2, "succeeded": 2},
            "p_flaky": {"started": 2, "retried": 1, "succeeded": 1},
            "p_exhausts": {"started": 2, "retried": 1, "exhausted": 1},
            "p_explicit": {
                "started": 5,
                "cancelled": 1,
                "discarded": 1,
                "snoozed": 1,
                "succeeded": 1,
                "failed": 1,
            },
            "p_charge": {"started": 2, "succeeded": 1, "duplicate": 1},
            "p_held": {"started": 1},
        }

        def arrived() -> bool:
            return all(
                totals(pipeline, task, event) == count
                for task, events in expected.items()
                for event, count in events.items()
            )

        wait_until(arrived, "every execution's counters in Graphite", timeout=60, interval=0.5)
        # movingSum leaves out the latest point: wait for two flushes after the data.
        wait_until(
            lambda: flushes(pipeline, "stats.counters.celery.p_held.started.count") >= 3,
            "two more flushes",
            timeout=30,
            interval=0.5,
        )
        queue = app.conf.task_default_queue
        wait_until(
            lambda: pipeline.render(f"stats.gauges.celery.queue.{queue}.depth"),
            "the queue depth gauge in Graphite",
            timeout=30,
            interval=0.5,
        )
        wait_until(
            lambda: pipeline.render("stats.gauges.celery.outbox.oldest_age"),
            "the outbox's gauges in Graphite",
            timeout=30,
            interval=0.5,
        )
        yield SimpleNamespace(expected=expected, queue=queue)
        release.set()
        still_running.get(timeout=30)


def totals(pipeline: Pipeline, task: str, event: str) -> float:
    """The sum of a counter's per-flush counts over the window."""
    series = pipeline.render(f"stats.counters.celery.{task}.{event}.count")
    return sum(value for s in series for value, _ in s["datapoints"] if value is not None)


def flushes(pipeline: Pipeline, target: str) -> int:
    return len(values(pipeline.render(target)))


def values(series: list[dict[str, Any]]) -> list[float]:
    return [value for s in series for value, _ in s["datapoints"] if value is not None]


def last(series: dict[str, Any]) -> float | None:
    """Grafana's reduce ``last`` with mode ``dropNN``: the last non-null value."""
    present = [value for value, _ in series["datapoints"] if value is not None]
    return present[-1] if present else None


def test_the_template_variables_list_the_tasks_and_queues(ran: Any, pipeline: Pipeline) -> None:
    [task, queue] = [v for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    assert set(pipeline.find(task["query"])) == set(ran.expected)
    assert pipeline.find(queue["query"]) == [ran.queue]


@pytest.mark.parametrize("target", dashboard_targets())
@pytest.mark.parametrize("choice", ["all", "two"])
def test_every_dashboard_query_returns_data(
    ran: Any, pipeline: Pipeline, target: str, choice: str
) -> None:
    # Grafana's "All" is the variable's allValue (*); two picked values are {a,b}.
    tasks, queues = (
        ("*", "*") if choice == "all" else ("{p_explicit,p_exhausts}", f"{{{ran.queue}}}")
    )
    query = target.replace("$task", tasks).replace("$queue", queues)
    series = pipeline.render(query, "-10min")
    assert series and values(series), f"{query}: no data"


def test_the_started_and_outcome_panels_count_every_execution(ran: Any, pipeline: Pipeline) -> None:
    [per_outcome] = [t for t in dashboard_targets() if t.startswith("groupByNode(")]
    series = pipeline.render(per_outcome.replace("$task", "*"), "-10min")
    # groupByNode(…rate, 4): one series per outcome; rate x flush interval = count.
    by_outcome = {s["target"]: sum(v for v, _ in s["datapoints"] if v is not None) for s in series}
    wanted: dict[str, int] = {}
    for events in ran.expected.values():
        for event, count in events.items():
            if event != "started":
                wanted[event] = wanted.get(event, 0) + count
    counted = {k: round(v * FLUSH_SECONDS) for k, v in by_outcome.items()}
    assert {k: v for k, v in counted.items() if v} == wanted
    assert set(wanted) == set(OUTCOMES)


def _condition(rule: dict[str, Any]) -> tuple[str, str, float, int]:
    data = {d["refId"]: d for d in rule["data"]}
    target = data["A"]["model"]["target"]
    assert data["B"]["model"]["type"] == "reduce" and data["B"]["model"]["reducer"] == "last"
    [evaluator] = [c["evaluator"] for c in data["C"]["model"]["conditions"]]
    assert evaluator["type"] == "gt"
    return (
        rule["title"],
        target,
        float(evaluator["params"][0]),
        data["A"]["relativeTimeRange"]["from"],
    )


#: Where each alert must fire on the data `ran` produced (instance names: aliasByNode).
FIRING = {
    "CeleryQueueBacklog": set(),  # the queue is nearly empty
    "CeleryTaskExhaustedRate": {"p_exhausts"},  # 1 of 2 outcomes: 50 % > 5 %
    "CeleryTaskExecutionsLost": {"p_held"},  # started, no outcome yet
    "CeleryOutboxStuck": set(),  # the outbox is empty
}


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["title"])
def test_every_alert_query_returns_data_and_fires_where_it_should(
    ran: Any, pipeline: Pipeline, rule: dict[str, Any]
) -> None:
    title, target, threshold, seconds = _condition(rule)
    series = pipeline.render(target, f"-{seconds}s")
    assert series and values(series), f"{title}: {target}: no data"
    names = {s["target"] for s in series}
    assert all(re.fullmatch(r"[\w.-]+", name) for name in names), names
    firing = {s["target"] for s in series if (last(s) or 0) > threshold}
    assert firing == FIRING[title], {s["target"]: last(s) for s in series}
