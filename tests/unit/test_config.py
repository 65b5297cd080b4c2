"""Typed settings read from ``app.conf``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable.config import (
    ReliableSettings,
    forget_settings,
    misspelt_keys,
    refuse_a_changed_database_url,
    settings_for,
)
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


# -- messages: the setting as the user wrote it, the docs site's page ------------------------


@pytest.mark.parametrize(
    ("attribute", "value", "message"),
    [
        (
            "CELERY_RELIABLE_STATSD_PORT",
            0,
            "CELERY_RELIABLE_STATSD_PORT must be an int between 1 and 65535, got 0",
        ),
        (
            "CELERY_RELIABLE_UNCLASSIFIED",
            "maybe",
            "CELERY_RELIABLE_UNCLASSIFIED must be one of ('fail', 'retry'), got 'maybe'",
        ),
        (
            "CELERY_RELIABLE_STATSD_TAGS",
            "influx",
            "CELERY_RELIABLE_STATSD_TAGS must be None or 'dogstatsd', got 'influx'",
        ),
        (
            "CELERY_RELIABLE_RECEIPT_TTL",
            -1,
            "CELERY_RELIABLE_RECEIPT_TTL must be a number of seconds > 0, got -1",
        ),
        (
            "CELERY_RELIABLE_LOG_OUTCOMES",
            1,
            "CELERY_RELIABLE_LOG_OUTCOMES must be True or False, got 1",
        ),
        (
            "CELERY_RELIABLE_WEB_AUTH",
            "admin",
            "CELERY_RELIABLE_WEB_AUTH: each entry must be 'user:password' with both parts "
            "non-empty",
        ),
    ],
)
def test_a_bad_value_is_named_as_written_under_djangos_namespace(
    app: Celery, attribute: str, value: object, message: str
) -> None:
    """Like a misspelt key (CELERY_RELIABLE_UNCLASIFIED), a bad value names the setting
    as it is written in settings.py, not by our internal lowercase name."""
    app.config_from_object(type("DjangoSettings", (), {attribute: value}), namespace="CELERY")
    with pytest.raises(ImproperlyConfigured) as bad:
        settings_for(app)
    assert str(bad.value) == message


def test_a_bad_value_in_app_conf_is_named_as_written(app: Celery) -> None:
    app.conf.reliable_statsd_port = 0
    with pytest.raises(ImproperlyConfigured) as bad:
        settings_for(app)
    assert str(bad.value) == "reliable_statsd_port must be an int between 1 and 65535, got 0"


def test_a_changed_database_url_is_named_as_written(app: Celery) -> None:
    class DjangoSettings:
        CELERY_RELIABLE_DATABASE_URL = "sqlite:///first.sqlite3"

    app.config_from_object(DjangoSettings, namespace="CELERY")
    settings_for(app)
    app.conf.CELERY_RELIABLE_DATABASE_URL = "sqlite:///second.sqlite3"
    with pytest.raises(ImproperlyConfigured) as bad:
        refuse_a_changed_database_url(app)
    assert str(bad.value).startswith(
        "CELERY_RELIABLE_DATABASE_URL changed from 'sqlite:///first.sqlite3' to "
        "'sqlite:///second.sqlite3' after the app first used its settings"
    )


def test_an_unknown_key_points_to_the_docs_site() -> None:
    with pytest.raises(ImproperlyConfigured) as bad:
        ReliableSettings.from_mapping({"reliable_unclasified": "retry"})
    assert str(bad.value) == (
        "unknown celery_reliable setting 'reliable_unclasified' (did you mean "
        "'reliable_unclassified'?); the settings are listed at "
        "https://example.invalid/celery-reliable/docs/configuration/"
    )


# -- misspelt prefixes: keys meant as ours that are never read ---------------------------------


def test_a_misspelt_prefix_under_djangos_namespace_is_found(app: Celery) -> None:
    class DjangoSettings:
        DEBUG = False
        CELERY_BROKER_URL = "memory://"
        CELERY_RELAIBLE_UNCLASSIFIED = "retry"  # letters swapped
        CELERY_RELIABEL_STATSD_HOST = "statsd"  # letters swapped
        CELERY_RELIABLESTATSD_PORT = 9125  # an underscore missing
        CELERYRELIABLE_HISTORY = False  # the namespace's underscore missing
        CELERY_RELAIBLE_SENTRI = False  # the prefix and the name both misspelt
        RELIABLE_DATABASE_URL = "django"  # the namespace missing
        CELERY_RELIABLE_STATSD_PREFIX = "shop"  # ours, read
        RELIABLE_API_TOKEN = "the project's own setting"

    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert misspelt_keys(app) == [
        ("CELERYRELIABLE_HISTORY", "CELERY_RELIABLE_HISTORY"),
        ("CELERY_RELAIBLE_SENTRI", "CELERY_RELIABLE_SENTRY"),
        ("CELERY_RELAIBLE_UNCLASSIFIED", "CELERY_RELIABLE_UNCLASSIFIED"),
        ("CELERY_RELIABEL_STATSD_HOST", "CELERY_RELIABLE_STATSD_HOST"),
        ("CELERY_RELIABLESTATSD_PORT", "CELERY_RELIABLE_STATSD_PORT"),
        ("RELIABLE_DATABASE_URL", "CELERY_RELIABLE_DATABASE_URL"),
    ]
    # Not an error: the keys are not ours, so the rest is read as usual.
    assert settings_for(app).statsd_prefix == "shop"


def test_a_misspelt_prefix_in_app_conf_is_found(app: Celery) -> None:
    app.conf.reliabel_unclassified = "retry"
    app.conf.relaible_statsd_host = "statsd"
    app.conf.reliable_statsd_prefix = "shop"
    assert misspelt_keys(app) == [
        ("relaible_statsd_host", "reliable_statsd_host"),
        ("reliabel_unclassified", "reliable_unclassified"),
    ]


def test_the_hosts_own_settings_are_never_taken_for_misspelt_ones(app: Celery) -> None:
    """Every setting of Celery (as Django's namespace writes it and as app.conf does)
    and of Django, and names that merely start like ours."""
    from celery.app.defaults import DEFAULTS as CELERY_DEFAULTS
    from django.conf import global_settings

    names = dict.fromkeys(name for name in dir(global_settings) if name.isupper())
    names.update(dict.fromkeys(f"CELERY_{name.upper()}" for name in CELERY_DEFAULTS))
    names.update(
        {
            "RELIABLE_API_TOKEN": None,
            "CELERY_RELEASE_CHANNEL": None,
            "CELERY_RELIANCE_SCORE": None,
            "CELERY_DATABASE_URL": None,
            "RELIABLY_SENTRY": None,
        }
    )
    app.config_from_object(type("DjangoSettings", (), names), namespace="CELERY")
    assert misspelt_keys(app) == []

    plain = Celery("plain", broker="memory://", set_as_current=False)
    try:
        plain.conf.update(dict.fromkeys(CELERY_DEFAULTS))
        plain.conf.update(release_channel="stable", database_url=None)
        assert misspelt_keys(plain) == []
    finally:
        plain.close()


def test_the_worker_warns_of_each_misspelt_key(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    """What the worker bootstep calls at start (ReliableWorkerStep.__init__)."""
    from celery_reliable.worker.bootstep import warn_of_misspelt_keys

    class DjangoSettings:
        CELERY_RELAIBLE_UNCLASSIFIED = "retry"
        CELERY_RESULT_BACKEND = "cache+memory://"

    app.config_from_object(DjangoSettings, namespace="CELERY")
    with caplog.at_level(logging.WARNING, logger="celery_reliable.worker"):
        warn_of_misspelt_keys(app)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "celery_reliable: the setting 'CELERY_RELAIBLE_UNCLASSIFIED' is not read: did you "
            "mean 'CELERY_RELIABLE_UNCLASSIFIED'? (the settings: "
            "https://example.invalid/celery-reliable/docs/configuration/)",
        )
    ]


def test_as_written_names_a_setting_in_the_apps_own_spelling(app: Celery) -> None:
    from celery_reliable.config import as_written

    assert as_written(app, "reliable_database_url") == "reliable_database_url"

    class DjangoSettings:
        CELERY_RELIABLE_STATSD_HOST = "statsd"

    django_app = Celery("django", set_as_current=False)
    try:
        django_app.config_from_object(DjangoSettings, namespace="CELERY")
        # Set, as written; left at its default, as it would be written.
        assert as_written(django_app, "reliable_statsd_host") == "CELERY_RELIABLE_STATSD_HOST"
        assert as_written(django_app, "reliable_database_url") == "CELERY_RELIABLE_DATABASE_URL"
    finally:
        django_app.close()


def test_the_beat_s_catch_up_is_seconds_and_may_be_zero() -> None:
    assert ReliableSettings.from_mapping({}).beat_catch_up == 3600
    assert ReliableSettings.from_mapping({"reliable_beat_catch_up": 0}).beat_catch_up == 0
    catch_up = {"reliable_beat_catch_up": timedelta(minutes=5)}
    assert ReliableSettings.from_mapping(catch_up).beat_catch_up == 300
    for wrong in (-1, "1h", float("inf"), True):
        with pytest.raises(ImproperlyConfigured, match="reliable_beat_catch_up must be a number"):
            ReliableSettings.from_mapping({"reliable_beat_catch_up": wrong})
