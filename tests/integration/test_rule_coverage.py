"""``pytest --reliable-rules[=strict]``: rule coverage, as a user's session sees it,
run by pytester in a pytest process of its own with the plugin loaded through its
``pytest11`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.docs_blocks import marked_block

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
PLAIN = ("-p", "no:celery", "-p", "no:cacheprovider")


def docs_module(marker: str) -> str:
    return marked_block(DOCS, marker)


def table_of(result: Any) -> list[str]:
    """The rule coverage section: its header's text, then its lines up to the end."""
    lines = result.outlines
    start = next(i for i, line in enumerate(lines) if "reliable rules:" in line)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("=")), len(lines))
    return [lines[start].strip("= "), *lines[start + 1 : end]]


def test_strict_fails_a_session_that_misses_a_rule_and_prints_the_docs_table(
    pytester: Any,
) -> None:
    pytester.makepyfile(test_shop=docs_module("testing-rules-example"))
    result = pytester.runpytest_subprocess(*PLAIN, "--reliable-rules=strict")

    result.assert_outcomes(passed=4)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    shown = marked_block(DOCS, "testing-rules-output", language="text").splitlines()
    assert table_of(result) == [shown[0].strip("= "), *shown[1:]]


def test_without_strict_the_same_session_passes_and_prints_the_table(pytester: Any) -> None:
    pytester.makepyfile(test_shop=docs_module("testing-rules-example"))
    result = pytester.runpytest_subprocess(*PLAIN, "--reliable-rules")

    assert result.ret == pytest.ExitCode.OK
    table = table_of(result)
    assert table[0] == "reliable rules: 4 of 5 declared rules exercised"
    assert "  NO   cancel_on(OrderGone)            never exercised" in table
    assert not [line for line in result.outlines if line.startswith("FAILED reliable rules")]


def test_the_missing_test_added_strict_passes_and_names_it(pytester: Any) -> None:
    module = docs_module("testing-rules-example") + "\n\n" + docs_module("testing-rules-fix")
    pytester.makepyfile(test_shop=module)
    result = pytester.runpytest_subprocess(*PLAIN, "--reliable-rules=strict")

    result.assert_outcomes(passed=5)
    assert result.ret == pytest.ExitCode.OK
    table = table_of(result)
    assert table[0] == "reliable rules: 5 of 5 declared rules exercised"
    assert (
        "  yes  cancel_on(OrderGone)            cancelled           "
        "test_shop.py::test_a_vanished_order_cancels_its_charge"
    ) in table


def test_each_test_that_exercised_a_rule_is_counted_the_first_named(pytester: Any) -> None:
    pytester.makepyfile(
        test_sends="""
        from celery import Celery
        from celery_reliable import ReliableTask, retry_on
        from celery_reliable.testing import perform_task

        app = Celery("mail", broker="memory://", set_as_current=False)
        app.conf.reliable_database_url = None

        @app.task(base=ReliableTask, name="mail.send")
        @retry_on(TimeoutError, ConnectionError, attempts=2)
        def send(error):
            raise error("the SMTP server did not answer")

        def test_a_timeout():
            perform_task(send, args=(TimeoutError,))

        def test_a_refused_connection_on_the_last_attempt():
            perform_task(send, args=(ConnectionError,), attempt=2)

        def test_a_timeout_again():
            perform_task(send, args=(TimeoutError,))
        """
    )
    result = pytester.runpytest_subprocess(*PLAIN, "--reliable-rules=strict")

    assert result.ret == pytest.ExitCode.OK
    assert table_of(result)[1:3] == [
        "mail.send",
        "  yes  retry_on(TimeoutError, ConnectionError)  retried, exhausted  "
        "test_sends.py::test_a_timeout (+2 more)",
    ]


def test_a_task_of_the_app_under_test_that_never_ran_is_a_miss(pytester: Any) -> None:
    pytester.makepyfile(
        test_reports="""
        import pytest
        from celery import Celery
        from celery_reliable import ReliableTask, discard_on

        app = Celery("reports", broker="memory://", set_as_current=False)
        app.conf.reliable_database_url = None

        @app.task(base=ReliableTask, name="reports.build")
        @discard_on(KeyError)
        def build(name):
            return name

        @app.task(base=ReliableTask, name="reports.plain")
        def plain():
            return 1

        @pytest.fixture
        def reliable_app():
            return app

        def test_nothing_runs_a_task():
            assert app.main == "reports"
        """
    )
    result = pytester.runpytest_subprocess(*PLAIN, "--reliable-rules=strict")

    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    table = table_of(result)
    assert table[0] == "reliable rules: 0 of 1 declared rules exercised"
    assert table[1:5] == [
        "reports.build",
        "  NO   discard_on(KeyError)        never exercised",
        "  -    retry_on(StoreUnavailable)  built in, not required",
        "reports.plain",
    ]
    result.stdout.fnmatch_lines(
        [
            "FAILED reliable rules: reports.build: discard_on(KeyError) was never "
            "exercised: write a test whose body raises KeyError"
        ]
    )


def test_an_embedded_worker_s_executions_count(pytester: Any) -> None:
    """A worker in a thread of the test process (Celery's ``celery_worker``), as the
    docs' embedded-worker example runs one: its retry is heard and credited."""
    pytester.makepyfile(test_embedded=docs_module("testing-embedded-worker-example"))
    result = pytester.runpytest_subprocess(
        "-p", "celery.contrib.pytest", *PLAIN, "--reliable-rules=strict"
    )

    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.OK
    assert (
        "  yes  retry_on(ConnectionError)   retried  "
        "test_embedded.py::test_a_retry_on_an_embedded_worker"
    ) in table_of(result)


def test_without_the_option_no_table(pytester: Any) -> None:
    pytester.makepyfile(test_shop=docs_module("testing-rules-example"))
    result = pytester.runpytest_subprocess(*PLAIN)

    assert result.ret == pytest.ExitCode.OK
    assert not [line for line in result.outlines if "reliable rules" in line]


def test_an_unknown_mode_is_a_usage_error(pytester: Any) -> None:
    pytester.makepyfile(test_shop=docs_module("testing-rules-example"))
    result = pytester.runpytest_subprocess(*PLAIN, "--reliable-rules=loose")

    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--reliable-rules: invalid choice: 'loose'*"])
