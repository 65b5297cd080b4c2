"""Optional libraries and errors: what a missing driver or library tells the user.

The real "library missing" path is proven in a venv without the extras
(``make plain-install``: ``tests/compat/plain_install.py``); these cover the pieces
that can be checked where every extra is installed.
"""

from __future__ import annotations

import importlib.util
import inspect

import pytest
from celery.exceptions import ImproperlyConfigured

from celery_reliable import errors
from celery_reliable.config import ReliableSettings
from celery_reliable.errors import MissingDependency, ReliableError, StoreUnavailable
from celery_reliable.store.engine import create_store_engine
from celery_reliable.wiring import _missing_libraries


def test_every_error_has_one_root() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__
    ]
    assert len(classes) >= 8
    assert all(issubclass(c, ReliableError) for c in classes)
    # the vanishing-row race is transient: the built-in StoreUnavailable rule retries it
    assert issubclass(errors.StoreContention, StoreUnavailable)


def test_missing_dependency_names_the_extra() -> None:
    error = MissingDependency("Sentry reports (reliable_sentry=True)", "sentry_sdk", extra="sentry")
    assert isinstance(error, ImportError)
    assert str(error) == (
        "Sentry reports (reliable_sentry=True) needs sentry_sdk, which is not installed: "
        "pip install 'celery-reliable[sentry]'"
    )


def test_a_bare_postgresql_url_uses_the_installed_driver() -> None:
    assert importlib.util.find_spec("psycopg2") is None  # the test extras install psycopg 3
    engine = create_store_engine("postgresql://shop:secret@127.0.0.1:1/shop")  # no connection
    try:
        assert engine.url.drivername == "postgresql+psycopg"
        assert engine.url.password == "secret"
    finally:
        engine.dispose()


def test_a_driver_that_is_not_installed_says_how_to_install_it() -> None:
    assert importlib.util.find_spec("pg8000") is None
    with pytest.raises(MissingDependency) as missing:
        create_store_engine("postgresql+pg8000://shop@127.0.0.1:1/shop")
    assert str(missing.value) == (
        "reliable_database_url (postgresql+pg8000) needs pg8000, which is not installed: "
        "pip install pg8000, or use postgresql+psycopg:// with "
        "pip install 'celery-reliable[postgres]'"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://shop@127.0.0.1/shop", "celery_reliable stores to SQLite or PostgreSQL"),
        ("not a url", "is not a database URL"),
    ],
)
def test_a_url_that_cannot_work_is_improperly_configured(url: str, says: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=says):
        create_store_engine(url)


def test_only_settings_the_app_set_count_as_configured() -> None:
    defaults = ReliableSettings.from_mapping({})
    assert defaults.explicit == frozenset()
    chosen = ReliableSettings.from_mapping({"reliable_sentry": True, "reliable_statsd_host": "h"})
    assert chosen.explicit == {"reliable_sentry", "reliable_statsd_host"}
    # both libraries are installed here: nothing is missing
    assert _missing_libraries(chosen) == []
