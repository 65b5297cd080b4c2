"""``celery reliable check`` and ``report``: as a real ``celery -A app reliable ...``
subprocess against a real broker, worker and store, and through click's runner."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from click.testing import CliRunner

from celery_reliable import ReliableTask, retry_on
from celery_reliable.cli import reliable
from celery_reliable.results import wait_for_outcome
from celery_reliable.store.history import MinuteCounts
from celery_reliable.store.timeutil import utcnow
from tests.helpers import ready_store
from tests.support.celery_apps import new_redis_db
from tests.support.cli import run_reliable
from tests.support.workers import celery_worker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.support.apps.gates"
SLOPPY = "gates.sloppy_task_with_a_name_long_enough_to_be_folded_by_rich"


def run(env: dict[str, str], *args: str, process: bool = False) -> subprocess.CompletedProcess[str]:
    """In this process, or in one of its own (``process``: the entry point, once;
    tests/support/cli.py)."""
    return run_reliable(APP, env, *args, process=process)


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "RELIABLE_TEST_BROKER": new_redis_db(redis_url),
        "RELIABLE_TEST_STORE": f"sqlite:///{tmp_path}/store.sqlite3",
    }


def test_check_prints_one_whole_line_per_task_and_gate_and_exits_1(env: dict[str, str]) -> None:
    done = run(env, "check", process=True)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "task\tgate\tstatus\treason"
    assert (
        f"{SLOPPY}\tclassified\tmiss\tno retry_on/discard_on/cancel_on: every exception ends "
        "the job FAILED; declare which errors are transient (retry_on) and which permanent "
        "(discard_on)"
    ) in lines
    assert f"{SLOPPY}\ttimeout\tmiss\t" in done.stdout
    assert (
        "gates.slow\tdelivery\tmiss\thard time limit 11m is not shorter than the "
        "visibility_timeout 5m (redis): a task still running is handed to a second worker; raise "
        "broker_transport_options['visibility_timeout']"
    ) in lines
    assert "gates.lookup\tidempotency\twaived\treads only; running twice is harmless" in lines
    charge = [line.split("\t")[2] for line in lines if line.startswith("gates.charge\t")]
    assert charge == ["pass"] * 5  # its own gates; StatsD and Sentry are the project's
    # The app's StatsD and Sentry: one line each, before the tasks.
    assert lines[1] == "(project)\tmetrics\tpass\tStatsD 127.0.0.1:8125, prefix 'celery'"
    assert lines[2].startswith("(project)\tsentry\twarn\t")  # no Sentry SDK initialised
    assert sum("\tsentry\t" in line for line in lines) == 1
    assert lines[-1] == ("4 tasks audited, 2 meet every gate; 4 unwaived misses: check fails"), (
        done.stdout
    )


def test_check_one_task_that_passes_exits_0(env: dict[str, str]) -> None:
    done = run(env, "check", "--task", "gates.charge")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 tasks audited, 1 meet every gate; check passes" in done.stdout
    assert "gates.lookup" not in done.stdout


def test_check_json(env: dict[str, str]) -> None:
    done = run(env, "check", "--json")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["passed"] is False
    assert data["gates"] == [
        "classified",
        "bounded",
        "idempotency",
        "timeout",
        "delivery",
        "metrics",
        "sentry",
    ]
    by_name = {task["task"]: task for task in data["tasks"]}
    assert set(by_name) == {"gates.charge", "gates.lookup", SLOPPY, "gates.slow"}
    assert by_name["gates.lookup"]["gates"]["idempotency"] == {
        "status": "waived",
        "reason": "reads only; running twice is harmless",
        "waived_by": "waive",
    }
    assert by_name["gates.charge"]["passed"] is True
    assert by_name["gates.charge"]["retry_window"] == pytest.approx(15 * 1.15)
    assert by_name[SLOPPY]["gates"]["timeout"]["status"] == "miss"


NO_STATSD = "reliable_statsd_host is not set: no outcome counters or durations reach a dashboard"


def test_a_project_level_fact_is_one_line_not_one_per_task(env: dict[str, str]) -> None:
    done = run({**env, "RELIABLE_TEST_NO_STATSD": "1"}, "check")
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[1] == f"(project)\tmetrics\tmiss\t{NO_STATSD}"
    assert sum("\tmetrics\t" in line for line in lines) == 1
    assert sum("\tsentry\t" in line for line in lines) == 1
    assert lines[-1] == (
        "4 tasks audited, 2 meet every gate of their own; the project misses metrics; "
        "5 unwaived misses: check fails"
    )

    data = json.loads(run({**env, "RELIABLE_TEST_NO_STATSD": "1"}, "check", "--json").stdout)
    assert data["project"]["gates"]["metrics"] == {"status": "miss", "reason": NO_STATSD}
    assert data["project"]["gates"]["sentry"]["status"] == "warn"
    assert all(set(task["gates"]).isdisjoint({"metrics", "sentry"}) for task in data["tasks"])


def test_an_app_wide_waiver_is_shown_as_one(env: dict[str, str]) -> None:
    waived = {
        **env,
        "RELIABLE_TEST_NO_STATSD": "1",
        "RELIABLE_TEST_WAIVE": json.dumps({"metrics": "dashboards read the outcome log"}),
    }
    done = run(waived, "check", "--task", "gates.charge")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[1] == (
        "(project)\tmetrics\twaived\treliable_waive (app-wide): dashboards read the outcome log"
    )
    assert done.stdout.splitlines()[-1] == "1 tasks audited, 1 meet every gate; check passes"

    data = json.loads(run(waived, "check", "--json").stdout)
    assert data["project"]["waivers"] == {"metrics": "dashboards read the outcome log"}
    assert data["project"]["gates"]["metrics"] == {
        "status": "waived",
        "reason": "reliable_waive (app-wide): dashboards read the outcome log",
        "waived_by": "reliable_waive",
    }

    typo = run({**env, "RELIABLE_TEST_WAIVE": json.dumps({"metric": "x"})}, "check")
    assert typo.returncode == 1
    assert typo.stderr.strip() == (
        "Error: reliable_waive names an unknown gate 'metric'; did you mean 'metrics'? the "
        "gates are classified, bounded, idempotency, timeout, delivery, metrics, sentry"
    )


def test_check_and_report_read_celerys_own_retry_options(env: dict[str, str]) -> None:
    legacy = {**env, "RELIABLE_TEST_AUTORETRY": "1"}
    done = run(legacy, "check", "--task", "gates.legacy")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "gates.legacy\tclassified\tpass\t1 rule (autoretry_for)" in lines
    assert (
        "gates.legacy\tbounded\tpass\tattempts 6 (autoretry_for, max_retries=5), worst-case "
        "retry window 31s"
    ) in lines

    forever = run(legacy, "check", "--task", "gates.forever")
    assert forever.returncode == 1
    assert (
        "gates.forever\tbounded\tmiss\tautoretry_for(ConnectionError, max_retries=None, "
        "default_retry_delay=180s): max_retries=None, so Celery retries these errors forever; "
        "set max_retries=N (N retries, then EXHAUSTED) or move to retry_on(..., attempts=N+1)"
    ) in forever.stdout.splitlines()

    report = run(legacy, "report", "gates.legacy")
    assert report.returncode == 0, report.stderr
    for expected in (
        "- Retried by Celery first (autoretry_for, max_retries=5), then EXHAUSTED unless a "
        "rule takes over: `Exception`",
        "`Exception` (autoretry_for): 6 attempts, retry_backoff=1, retry_backoff_max=600, "
        "retry_jitter=True",
        "| 5 | 0s | 16s |",  # Celery's full jitter: anywhere from 0 to the backoff
        "| bounded | pass | attempts 6 (autoretry_for, max_retries=5), worst-case retry "
        "window 31s |",
    ):
        assert expected in report.stdout, f"{expected!r} not in:\n{report.stdout}"
    data = json.loads(run(legacy, "report", "gates.legacy", "--json").stdout)
    assert [rule["kind"] for rule in data["rules"]] == ["autoretry_for"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (
            ("check", "--task", "gates.chrage"),
            "Error: no task named 'gates.chrage'; did you mean 'gates.charge'?",
        ),
        (("report", "gates.nope"), "Error: no task named 'gates.nope'"),
    ],
)
def test_an_unknown_task_is_one_line(env: dict[str, str], args: tuple[str, ...], says: str) -> None:
    done = run(env, *args)
    assert done.returncode == 1
    assert done.stderr.startswith(says), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == ""


def test_a_misspelt_setting_is_one_line(env: dict[str, str]) -> None:
    done = run({**env, "RELIABLE_TEST_TYPO": "1"}, "check")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: unknown celery_reliable setting 'reliable_statsd_hots' (did you mean "
        "'reliable_statsd_host'?); the settings are listed at "
        "https://example.invalid/celery-reliable/docs/configuration/"
    )


def test_report_after_a_real_worker_ran_the_task(env: dict[str, str]) -> None:
    app = Celery(
        "gates-client",
        broker=env["RELIABLE_TEST_BROKER"],
        backend=env["RELIABLE_TEST_BROKER"],
        set_as_current=False,
    )
    with celery_worker(APP, env, concurrency=2) as worker:
        results = [app.send_task("gates.charge", (n,)) for n in (1, 2, 3, 4, 5, 6, -1, -2)]
        for result in results:
            wait_for_outcome(result, timeout=30)
        worker.stop()  # the history is written as each pool process exits
    done = run(env, "report", "gates.charge")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("# Reliability report — `gates.charge`\n")
    for expected in (
        "- Queue: `celery`",
        "- Timeout: timeout=30s (soft 30s, hard 35s)",
        "- Idempotency strategy: idempotency_key 'c:{order_id}': a receipt per key in the store",
        "- Heartbeat: none (a body that hangs holds its worker slot until the hard time "
        "limit, 35s)",
        "- Transient, retried (retry_on): `ConnectionError`",
        "- Permanent, discarded (discard_on): `CardDeclined`",
        "| 4 | 8s | 9.2s |",
        "| classified | pass | 2 rules (discard_on, retry_on) |",
        "| succeeded | 6 | 75.0% |",
        "| discarded | 2 | 25.0% |",
        "| all | 8 | |",
        "- Dead letters (all time): discarded 2 (2 not retried)",
        "- Receipts held: 6 succeeded, 0 in progress (0 abandoned, lease run out)",
    ):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert "- Duration: median ≈ " in text

    data = json.loads(run(env, "report", "gates.charge", "--json").stdout)
    assert data["last_24h"]["outcomes"]["succeeded"] == 6
    assert data["last_24h"]["dead_letters"] == {"discarded": {"total": 2, "not_retried": 2}}
    assert data["gates"]["passed"] is True
    assert sorted(rule["kind"] for rule in data["rules"]) == ["discard_on", "retry_on"]
    [retry] = [rule for rule in data["rules"] if rule["kind"] == "retry_on"]
    assert [step["attempt"] for step in retry["schedule"]] == [1, 2, 3, 4]


def test_report_with_the_store_down_prints_the_rest_and_exits_1(
    env: dict[str, str], tmp_path: Path
) -> None:
    down = {**env, "RELIABLE_TEST_STORE": f"sqlite:///{tmp_path}/missing/store.sqlite3"}
    done = run(down, "report", "gates.lookup")
    assert done.returncode == 1
    assert "- Idempotency strategy: none, waived: reads only; running twice is harmless" in (
        done.stdout
    )
    assert "No figures: the store is unavailable" in done.stdout
    assert done.stderr.startswith("Error: no figures from the store: the store is unavailable")
    assert len(done.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ click's runner


def _app(tmp_path: Path) -> Celery:
    app = Celery("runner", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.reliable_database_url = f"sqlite:///{tmp_path}/runner.sqlite3"
    app.conf.reliable_statsd_host = "127.0.0.1"

    @app.task(
        base=ReliableTask,
        shared=False,
        name="runner.ok",
        timeout=5,
        idempotency_key="{n}",
        acks_late=True,
        reject_on_worker_lost=True,
    )
    @retry_on(ConnectionError)
    def ok(n: int) -> None: ...

    @app.task(base=ReliableTask, shared=False, name="runner.bare")
    def bare() -> None: ...

    return app


def invoke(app: Celery, *args: str) -> Any:
    return CliRunner().invoke(reliable, list(args), obj=SimpleNamespace(app=app))


@pytest.mark.usefixtures("no_shared_tasks")
def test_runner_check_and_report(tmp_path: Path) -> None:
    app = _app(tmp_path)
    failing = invoke(app, "check")
    assert failing.exit_code == 1
    assert "runner.bare\tclassified\tmiss\t" in failing.output

    passing = invoke(app, "check", "--task", "runner.ok")
    assert passing.exit_code == 0, passing.output

    waived = invoke(app, "check", "--task", "runner.bare", "--json")
    assert json.loads(waived.output)["tasks"][0]["gates"]["timeout"]["status"] == "miss"

    store = ready_store(app)
    counts = MinuteCounts()
    for seconds in (0.2, 0.3, 0.4):
        counts.add(seconds)
    minute = utcnow().replace(second=0, microsecond=0)
    store.history.add({("runner.ok", minute, "celery", "succeeded"): counts})
    report = invoke(app, "report", "runner.ok")
    assert report.exit_code == 0, report.output
    assert "| succeeded | 3 | 100.0% |" in report.output
    # All three in the (100 ms, 500 ms] bucket, which ends at the longest, 400 ms.
    assert "- Duration: median ≈ 250 ms, mean 300 ms, longest 400 ms" in report.output

    unknown = invoke(app, "report", "runner.nope")
    assert unknown.exit_code == 1
    assert "Error: no task named 'runner.nope'" in unknown.output


@pytest.mark.usefixtures("no_shared_tasks")
def test_check_of_an_app_without_reliable_tasks_fails() -> None:
    # As `celery reliable check` without -A: Celery's empty default app.
    app = Celery("empty", broker="memory://", set_as_current=False)
    result = invoke(app, "check")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: no ReliableTask in the app 'empty': run `celery -A proj reliable check` "
        "with the module that defines the app and imports its tasks"
    )


@pytest.mark.usefixtures("no_shared_tasks")
def test_piped_check_keeps_a_reason_with_line_breaks_on_its_line(tmp_path: Path) -> None:
    app = _app(tmp_path)

    @app.task(
        base=ReliableTask,
        shared=False,
        name="runner.multi",
        timeout=5,
        waive={"idempotency": "reads only\tand\nnothing else"},
    )
    def multi() -> None: ...

    result = invoke(app, "check", "--task", "runner.multi")
    assert "runner.multi\tidempotency\twaived\treads only\\tand\\nnothing else" in (
        result.output.splitlines()
    )


def test_a_waive_typo_is_one_line(tmp_path: Path) -> None:
    app = Celery("typo", broker="memory://", set_as_current=False)

    @app.task(base=ReliableTask, shared=False, name="typo.task", waive={"idempotence": "x"})
    def typo() -> None: ...

    result = invoke(app, "check")
    assert result.exit_code == 1
    assert result.output.strip().startswith(
        "Error: task typo.task: waive names an unknown gate 'idempotence'; did you mean "
        "'idempotency'?"
    )
    assert result.output.count("\n") == 1
