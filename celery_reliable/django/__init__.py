"""celery_reliable in a Django project: the store in Django's own database.

Add ``"celery_reliable.django"`` to ``INSTALLED_APPS`` and set the Celery setting
``reliable_database_url = "django"`` (``CELERY_RELIABLE_DATABASE_URL`` with the usual
``CELERY_`` namespace; ``"django:ALIAS"`` names another entry of ``DATABASES``). Then:

* the store's tables (receipts, dead letters, unique locks, outcome history) live in
  that database and ``python manage.py migrate`` creates and upgrades them;
* ``with self.atomic():`` in a task is Django's ``transaction.atomic()`` on Django's
  own connection, and the task's idempotency receipt is marked succeeded inside that
  transaction: ``Payment.objects.create(...)`` and the receipt commit together, or
  neither does.

The claims, dead letters and the CLI reach the same database through a SQLAlchemy
engine of their own, built from the ``DATABASES`` entry (SQLite or PostgreSQL).
"""

from __future__ import annotations

#: ``reliable_database_url`` value that puts the store in Django's database.
DJANGO_URL = "django"
#: The ``DATABASES`` alias used by ``"django"`` alone.
DEFAULT_ALIAS = "default"


def django_alias(url: str) -> str | None:
    """The ``DATABASES`` alias a ``reliable_database_url`` names, or None for a URL."""
    if url == DJANGO_URL:
        return DEFAULT_ALIAS
    if url.startswith(DJANGO_URL + ":") and "//" not in url:
        return url[len(DJANGO_URL) + 1 :] or DEFAULT_ALIAS
    return None
