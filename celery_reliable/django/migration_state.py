"""Which of celery_reliable's Django migrations a database has applied, read the way
``manage.py showmigrations`` reads them (for ``celery -A proj reliable db current``)."""

from __future__ import annotations

from celery.exceptions import ImproperlyConfigured

#: The Django app of celery_reliable (``celery_reliable.django.apps``).
APP_NAME = "celery_reliable.django"
APP_LABEL = "celery_reliable"


def our_migrations(alias: str) -> list[tuple[str, bool]]:
    """Our migrations, oldest first, each with whether ``DATABASES[alias]`` has it
    applied. Raises ``ImproperlyConfigured`` when ``celery_reliable.django`` is not in
    ``INSTALLED_APPS`` (then ``manage.py migrate`` would never create the store's
    tables), and Django's ``DatabaseError`` when the database cannot be read."""
    import django
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured as DjangoImproperlyConfigured
    from django.db import connections
    from django.db.migrations.loader import MigrationLoader

    if not apps.ready:
        # Celery's Django fixup sets Django up when the app's modules are imported;
        # an app that bypassed it (no DJANGO_SETTINGS_MODULE at import) has not.
        try:
            django.setup()
        except DjangoImproperlyConfigured as exc:
            raise ImproperlyConfigured(f"Django is not set up: {exc}") from exc
    if not apps.is_installed(APP_NAME):
        raise ImproperlyConfigured(
            f"the store is Django's database, but {APP_NAME!r} is not in INSTALLED_APPS "
            "(so no `manage.py migrate` creates its tables): add it, then run "
            "`python manage.py migrate`"
        )
    loader = MigrationLoader(connections[alias], ignore_no_migrations=True)
    graph = loader.graph
    ordered: list[tuple[str, str]] = []
    for leaf in graph.leaf_nodes(APP_LABEL):
        for node in graph.forwards_plan(leaf):
            if node[0] == APP_LABEL and node not in ordered:
                ordered.append(node)
    return [(node[1], node in loader.applied_migrations) for node in ordered]
