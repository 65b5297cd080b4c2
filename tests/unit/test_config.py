"""Typed settings read from ``app.conf``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable.config import ReliableSettings, forget_settings, settings_for
from celery_reliable.policy import RetryRule


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    yield app
    app.close()


# -- from_mapping --------------------------------------------------------------------------


def test_defaults() -> None:
    settings = ReliableSettings.from_mapping({})
    assert settings.database_url == "sqlite:///celery_reliable.sqlite3"
    assert settings.statsd_host is None
    assert settings.statsd_port == 8125
    assert settings.statsd_prefix == "celery"
    assert settings.statsd_tags is None
    assert settings.unclassified == "fail"
    assert settings.unclassified_attempts == 5
    assert settings.unclassified_rule is None
    assert settings.receipt_ttl == 7 * 24 * 3600
    assert settings.dead_letter_redact is False
    assert settings.queue_depth_interval > 0
    assert settings.log_outcomes is True


def test_values_are_read() -> None:
    settings = ReliableSettings.from_mapping(
        {
            "reliable_database_url": "sqlite:///reliable.db",
            "reliable_statsd_host": "127.0.0.1",
            "reliable_statsd_port": 9125,
            "reliable_statsd_prefix": "shop",
            "reliable_statsd_tags": "dogstatsd",
            "reliable_receipt_ttl": timedelta(days=1),
            "reliable_dead_letter_redact": True,
            "reliable_log_outcomes": False,
        }
    )
    assert settings.database_url == "sqlite:///reliable.db"
    assert settings.statsd_host == "127.0.0.1"
    assert settings.statsd_port == 9125
    assert settings.statsd_prefix == "shop"
    assert settings.statsd_tags == "dogstatsd"
    assert settings.receipt_ttl == 24 * 3600
    assert settings.dead_letter_redact is True
    assert settings.log_outcomes is False


def test_unknown_key_suggests_the_right_name() -> None:
    with pytest.raises(ImproperlyConfigured, match="reliable_unclasified") as info:
        ReliableSettings.from_mapping({"reliable_unclasified": "retry"})
    assert "did you mean 'reliable_unclassified'" in str(info.value)


def test_unknown_key_without_a_close_match_is_still_an_error() -> None:
    with pytest.raises(ImproperlyConfigured, match="reliable_zzz"):
        ReliableSettings.from_mapping({"reliable_zzz": 1})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("reliable_unclassified", "maybe"),
        ("reliable_unclassified", None),
        ("reliable_unclassified", "FAIL"),
        ("reliable_statsd_port", 0),
        ("reliable_statsd_port", 70000),
        ("reliable_statsd_port", "abc"),
        ("reliable_statsd_port", -1),
        ("reliable_statsd_port", 8125.5),
        ("reliable_statsd_port", True),
        ("reliable_receipt_ttl", -1),
        ("reliable_receipt_ttl", 0),
        ("reliable_receipt_ttl", "1 week"),
        ("reliable_receipt_ttl", float("nan")),
        ("reliable_statsd_tags", "influx"),
        ("reliable_statsd_tags", True),
        ("reliable_unclassified_attempts", 0),
        ("reliable_unclassified_attempts", 1.5),
        ("reliable_statsd_prefix", None),
        ("reliable_statsd_host", 127),
        ("reliable_database_url", 5),
        ("reliable_dead_letter_redact", "yes"),
        ("reliable_log_outcomes", 1),
        ("reliable_queue_depth_interval", 0),
    ],
)
def test_bad_values_are_improperly_configured(key: str, value: object) -> None:
    with pytest.raises(ImproperlyConfigured, match=key):
        ReliableSettings.from_mapping({key: value})


def test_retry_mode_yields_an_unclassified_rule() -> None:
    settings = ReliableSettings.from_mapping(
        {"reliable_unclassified": "retry", "reliable_unclassified_attempts": 3}
    )
    rule = settings.unclassified_rule
    assert isinstance(rule, RetryRule)
    assert rule.attempts == 3
    assert rule.exc_types == (Exception,)
    assert rule.jitter > 0


def test_retry_mode_default_attempts() -> None:
    rule = ReliableSettings.from_mapping({"reliable_unclassified": "retry"}).unclassified_rule
    assert isinstance(rule, RetryRule)
    assert rule.attempts == 5


def test_fail_mode_has_no_unclassified_rule() -> None:
    settings = ReliableSettings.from_mapping(
        {"reliable_unclassified": "fail", "reliable_unclassified_attempts": 3}
    )
    assert settings.unclassified_rule is None


# -- settings_for(app) -------------------------------------------------------------------------


def test_settings_for_reads_app_conf(app: Celery) -> None:
    app.conf.reliable_statsd_host = "statsd.local"
    app.conf.reliable_statsd_port = 9125
    app.conf.reliable_unclassified = "retry"
    app.conf.reliable_unclassified_attempts = 4
    settings = settings_for(app)
    assert settings.statsd_host == "statsd.local"
    assert settings.statsd_port == 9125
    assert settings.unclassified == "retry"
    assert isinstance(settings.unclassified_rule, RetryRule)
    assert settings.unclassified_rule.attempts == 4


def test_settings_for_an_app_without_our_keys_gives_defaults(app: Celery) -> None:
    assert settings_for(app) == ReliableSettings.from_mapping({})


def test_settings_for_reads_keys_from_a_config_object(app: Celery) -> None:
    class Config:
        broker_url = "memory://"
        reliable_unclassified = "retry"
        reliable_statsd_prefix = "shop"

    app.config_from_object(Config)
    settings = settings_for(app)
    assert settings.unclassified == "retry"
    assert settings.statsd_prefix == "shop"


def test_settings_for_reads_a_django_style_namespace(app: Celery) -> None:
    class DjangoSettings:
        DEBUG = False
        CELERY_BROKER_URL = "memory://"
        CELERY_RELIABLE_UNCLASSIFIED = "retry"
        CELERY_RELIABLE_UNCLASSIFIED_ATTEMPTS = 3
        CELERY_RELIABLE_STATSD_PREFIX = "django"

    app.config_from_object(DjangoSettings, namespace="CELERY")
    settings = settings_for(app)
    assert settings.unclassified == "retry"
    assert isinstance(settings.unclassified_rule, RetryRule)
    assert settings.unclassified_rule.attempts == 3
    assert settings.statsd_prefix == "django"


def test_unknown_namespaced_key_is_improperly_configured(app: Celery) -> None:
    class DjangoSettings:
        CELERY_RELIABLE_UNCLASIFIED = "retry"

    app.config_from_object(DjangoSettings, namespace="CELERY")
    with pytest.raises(ImproperlyConfigured) as bad:
        settings_for(app)
    # named as the user wrote it, and the fix in the same spelling
    assert "'CELERY_RELIABLE_UNCLASIFIED' (did you mean 'CELERY_RELIABLE_UNCLASSIFIED'?)" in str(
        bad.value
    )


def test_unprefixed_django_setting_is_not_ours_under_a_namespace(app: Celery) -> None:
    class DjangoSettings:
        CELERY_BROKER_URL = "memory://"
        CELERY_RELIABLE_UNCLASSIFIED = "retry"
        RELIABLE_API_TOKEN = "an unrelated setting of the Django project"

    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert settings_for(app).unclassified == "retry"


def test_bad_value_in_app_conf_is_improperly_configured(app: Celery) -> None:
    app.conf.reliable_statsd_port = 0
    with pytest.raises(ImproperlyConfigured, match="reliable_statsd_port"):
        settings_for(app)


def test_unknown_key_in_app_conf_is_improperly_configured(app: Celery) -> None:
    app.conf.reliable_unclasified = "retry"
    with pytest.raises(ImproperlyConfigured, match="reliable_unclassified"):
        settings_for(app)


def test_settings_are_cached_per_app(app: Celery) -> None:
    app.conf.reliable_statsd_prefix = "first"
    first = settings_for(app)
    assert settings_for(app) is first

    # Read once: a later change is not seen until the cache is dropped.
    app.conf.reliable_statsd_prefix = "second"
    assert settings_for(app) is first
    assert settings_for(app).statsd_prefix == "first"

    forget_settings(app)
    assert settings_for(app).statsd_prefix == "second"


def test_each_app_has_its_own_settings() -> None:
    apps: list[Any] = []
    for prefix in ("one", "two"):
        app = Celery(prefix, broker="memory://", set_as_current=False)
        app.conf.reliable_statsd_prefix = prefix
        apps.append(app)
    try:
        assert settings_for(apps[0]).statsd_prefix == "one"
        assert settings_for(apps[1]).statsd_prefix == "two"
        assert settings_for(apps[0]) is not settings_for(apps[1])
    finally:
        for app in apps:
            app.close()
