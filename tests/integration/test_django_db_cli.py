"""``celery -A shop reliable db current|upgrade`` in the example Django shop, whose
store is Django's database (``CELERY_RELIABLE_DATABASE_URL = "django"``): the real
``manage.py migrate`` and the real ``celery`` program, on SQLite and PostgreSQL.

Django's migrations own the schema there: the commands say so in one line, list which
of celery_reliable's migrations are applied, and ``db upgrade`` changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from celery_reliable.store import migrate
from tests.integration.test_django import EXAMPLE, manage, migrated, shop_env
from tests.support.workers import ROOT

pytestmark = pytest.mark.integration

# The fixtures this module shares with test_django.py (each module gets its own
# database and migrates it).
__all__ = ["migrated", "shop_env"]

HEAD = migrate.head()
#: celery_reliable's Django migrations, oldest first (0001_store, 0002_web_indexes, ...).
OURS = sorted(
    path.stem for path in (ROOT / "celery_reliable" / "django" / "migrations").glob("0*.py")
)
OWNED = (
    "): Django's migrations own celery_reliable's schema: `python manage.py migrate` "
    "applies them (see https://example.invalid/celery-reliable/docs/django/)"
)


def reliable(
    env: dict[str, str], *args: str, settings: str = "shop.settings"
) -> subprocess.CompletedProcess[str]:
    """``celery -A shop reliable ...`` as a user runs it, in the shop's folder (where
    ``tests`` is the shop's own package: the shop's settings, not the crash tests')."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "shop", "reliable", *args],
        cwd=EXAMPLE,
        env={**os.environ, **env, "DJANGO_SETTINGS_MODULE": settings},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_owned_by_django(line: str) -> None:
    assert line.startswith("Django's database 'default' ("), line
    assert line.endswith(OWNED), line


def test_db_current_lists_our_applied_django_migrations(
    shop_env: dict[str, str], migrated: str
) -> None:
    done = reliable(shop_env, "db", "current")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    first, *rest = done.stdout.splitlines()
    assert_owned_by_django(first)
    assert rest == [
        "celery_reliable",
        *(f" [X] {name}" for name in OURS),
        f"schema at {HEAD}, code needs {HEAD}: up to date",
    ]


def test_db_current_and_upgrade_with_a_migration_not_applied(
    shop_env: dict[str, str], migrated: str
) -> None:
    # Back to the first: the later ones' reverse is a no-op (the tables stay).
    first_only = ["celery_reliable", " [X] 0001_store", *(f" [ ] {name}" for name in OURS[1:])]
    manage(shop_env, "migrate", "celery_reliable", "0001_store", "--no-input")
    try:
        current = reliable(shop_env, "db", "current")
        assert current.returncode == 0, current.stdout + current.stderr
        assert current.stdout.splitlines()[1:] == [
            *first_only,
            f"schema at {HEAD}, code needs {HEAD}: run `python manage.py migrate celery_reliable`",
        ]

        upgrade = reliable(shop_env, "db", "upgrade")
        assert upgrade.returncode == 1, upgrade.stdout + upgrade.stderr
        assert "Traceback" not in upgrade.stderr
        assert upgrade.stderr == (
            "Error: nothing done: run `python manage.py migrate`, which applies "
            "celery_reliable's migrations with your apps' own\n"
        )
        first, *rest = upgrade.stdout.splitlines()
        assert_owned_by_django(first)
        assert rest == first_only
        # It ran nothing: Django's record is as it was.
        shown = manage(shop_env, "showmigrations", "celery_reliable").splitlines()
        assert shown == first_only
    finally:
        manage(shop_env, "migrate", "--no-input")


def test_db_current_without_our_django_app_says_to_add_it(
    shop_env: dict[str, str], migrated: str, tmp_path: Path
) -> None:
    (tmp_path / "without_our_app.py").write_text(
        "from shop.settings import *  # noqa: F403\n"
        "INSTALLED_APPS = [a for a in INSTALLED_APPS if a != 'celery_reliable.django']\n"
    )
    env = {**shop_env, "PYTHONPATH": os.pathsep.join([shop_env["PYTHONPATH"], str(tmp_path)])}
    for command in ("current", "upgrade"):
        done = reliable(env, "db", command, settings="without_our_app")
        assert done.returncode == 1, done.stdout + done.stderr
        assert done.stderr == (
            "Error: the store is Django's database, but 'celery_reliable.django' is not in "
            "INSTALLED_APPS (so no `manage.py migrate` creates its tables): add it, then "
            "run `python manage.py migrate`\n"
        )
