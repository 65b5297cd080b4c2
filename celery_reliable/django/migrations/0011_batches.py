"""The store's migration 0012 (batches) in Django's database."""

from __future__ import annotations

from django.db import migrations


def upgrade(apps: object, schema_editor: object) -> None:
    from celery_reliable.django.database import upgrade_store

    upgrade_store(schema_editor.connection.alias)  # type: ignore[attr-defined]


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("celery_reliable", "0010_limit_pace")]
    operations = [migrations.RunPython(upgrade, migrations.RunPython.noop, elidable=False)]
