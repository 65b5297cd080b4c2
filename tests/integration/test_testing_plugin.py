"""``celery_reliable.testing`` and its pytest plugin, as a user's test suite uses them:
run by pytester in a pytest process of its own, with the plugin loaded through its
``pytest11`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.docs_blocks import marked_block

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def docs_module(marker: str = "testing-example") -> str:
    """A test module docs/testing.md shows, as a reader would copy it."""
    return marked_block(DOCS, marker)


def test_a_users_suite_with_the_plugin(pytester: Any) -> None:
    pytester.makepyfile(test_shop=docs_module())
    result = pytester.runpytest_subprocess("-p", "no:celery", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_the_plugin_works_beside_pytest_celery(pytester: Any) -> None:
    """pytest-celery's plugin (``celery``) enabled too: our fixtures do not clash."""
    pytester.makepyfile(test_shop=docs_module())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_enqueued_and_drain_as_the_docs_show(pytester: Any) -> None:
    pytester.makepyfile(test_orders=docs_module("testing-enqueue-example"))
    result = pytester.runpytest_subprocess("-p", "no:celery", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_capture_outcomes_as_the_docs_show(pytester: Any) -> None:
    pytester.makepyfile(test_invoices=docs_module("testing-capture-example"))
    result = pytester.runpytest_subprocess("-p", "no:celery", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_statsd_lines_and_sentry_events_as_the_docs_show(pytester: Any) -> None:
    pytester.makepyfile(test_refunds=docs_module("testing-wire-example"))
    result = pytester.runpytest_subprocess("-p", "no:celery", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_an_embedded_worker_with_celery_s_own_plugin_as_the_docs_show(pytester: Any) -> None:
    pytester.makepyfile(test_embedded=docs_module("testing-embedded-worker-example"))
    result = pytester.runpytest_subprocess(
        "-p", "celery.contrib.pytest", "-p", "no:celery", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)


def test_a_store_url_set_after_first_use_is_refused_until_reset(tmp_path: Path) -> None:
    from celery import Celery
    from celery.exceptions import ImproperlyConfigured

    from celery_reliable import ReliableTask
    from celery_reliable.store import store_for
    from celery_reliable.testing import reset

    app = Celery("late-url", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = None

    @app.task(base=ReliableTask, shared=False, name="late.echo")
    def echo(n: int) -> int:
        return n

    assert echo.apply((1,)).get() == 1
    assert store_for(app) is None
    # Under Django's namespace, in upper case: read as settings_for reads it.
    app.conf["RELIABLE_DATABASE_URL"] = f"sqlite:///{tmp_path}/store.sqlite3"
    with pytest.raises(ImproperlyConfigured, match=r"changed from None to 'sqlite:///"):
        echo.apply((2,))
    reset(app)
    assert echo.apply((3,)).get() == 3
    store = store_for(app)
    assert store is not None and store.url.endswith("/store.sqlite3")
