"""The store's tables in Django's database: the shipped Alembic migrations, applied by
``manage.py migrate`` (the same ones ``celery reliable db upgrade`` applies)."""

from __future__ import annotations

from typing import Any

from django.db import migrations


def upgrade(apps: Any, schema_editor: Any) -> None:
    from celery_reliable.django.database import upgrade_store

    upgrade_store(schema_editor.connection.alias)


def downgrade(apps: Any, schema_editor: Any) -> None:
    from celery_reliable.django.database import downgrade_store

    downgrade_store(schema_editor.connection.alias)


class Migration(migrations.Migration):
    # Alembic runs on a connection of its own: Django's migration transaction must
    # not hold the SQLite write lock meanwhile.
    atomic = False
    initial = True
    dependencies: list[tuple[str, str]] = []
    operations = [migrations.RunPython(upgrade, downgrade, elidable=False)]
