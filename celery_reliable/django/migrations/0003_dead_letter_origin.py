"""The store's migration 0004 (where a dead letter came from) in Django's database."""

from __future__ import annotations

from django.db import migrations


def upgrade(apps: object, schema_editor: object) -> None:
    from celery_reliable.django.database import upgrade_store

    upgrade_store(schema_editor.connection.alias)  # type: ignore[attr-defined]


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("celery_reliable", "0002_web_indexes")]
    operations = [migrations.RunPython(upgrade, migrations.RunPython.noop, elidable=False)]
