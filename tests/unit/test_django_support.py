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
