"""The parts of the Django support that need no Django project (the rest runs in
tests/integration/test_django.py and the example's own suite)."""

from __future__ import annotations

import socket

import pytest

from celery_reliable.django import django_alias
from celery_reliable.testing.statsd import StatsdLines


@pytest.mark.parametrize(
    ("url", "alias"),
    [
        ("django", "default"),
        ("django:", "default"),
        ("django:replica", "replica"),
        ("sqlite:///django.sqlite3", None),
        ("postgresql://django@db/django", None),
        ("django://host/db", None),
    ],
)
def test_which_urls_name_django_s_database(url: str, alias: str | None) -> None:
    assert django_alias(url) == alias


def test_statsd_lines_keeps_what_arrives_on_its_socket() -> None:
    lines = StatsdLines()
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sender.sendto(b"a.started:1|c\na.duration:2.5|ms", (lines.host, lines.port))
        sender.sendto(b"a.succeeded:1|c", (lines.host, lines.port))
        assert lines.wait_for(r"a\.succeeded:1\|c") == ["a.succeeded:1|c"]
        assert lines.names() == ["a.started", "a.duration", "a.succeeded"]
        assert "a.duration:2.5|ms" in lines
        lines.clear()
        assert len(lines) == 0
        with pytest.raises(AssertionError, match="0 of 1 StatsD lines"):
            lines.wait_for("never", timeout=0.05)
    finally:
        sender.close()
        lines.close()


def test_on_commit_callbacks_are_left_alone_without_django() -> None:
    import sys

    from celery_reliable.testing.django import run_on_commit_callbacks

    if "django.db" in sys.modules:  # imported by another test: settings not configured
        from django.conf import settings

        assert not settings.configured
    assert run_on_commit_callbacks() == 0


def test_the_store_url_of_a_django_postgresql_database() -> None:
    """A Unix-socket folder is libpq's host parameter, and libpq OPTIONS (a
    search_path in ``options``) reach the store's own connections. Run in a process of
    its own: Django's settings are configured once per process."""
    import subprocess
    import sys

    code = """
import django
from django.conf import settings
settings.configure(DATABASES={
    "default": {"ENGINE": "django.db.backends.postgresql", "NAME": "shop", "USER": "app",
                "PASSWORD": "p@ss", "HOST": "/var/run/postgresql", "PORT": "5433",
                "OPTIONS": {"options": "-c search_path=shop", "sslmode": "require",
                            "pool": True}},
})
django.setup()
from sqlalchemy.engine import make_url
from celery_reliable.django.database import engine_url
url = make_url(engine_url("default"))
print(url.host, url.port, url.database, url.username, url.password, sorted(url.query.items()))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "None 5433 shop app p@ss [('host', '/var/run/postgresql'), "
        "('options', '-c search_path=shop'), ('sslmode', 'require')]"
    )
