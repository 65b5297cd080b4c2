"""The store's migration 0011 (the pace of a limit's takes) in Django's database."""

from __future__ import annotations

from django.db import migrations


def upgrade(apps: object, schema_editor: object) -> None:
    from celery_reliable.django.database import upgrade_store

    upgrade_store(schema_editor.connection.alias)  # type: ignore[attr-defined]


class Migration(migrations.Migration):
    atomic = False
    dependencies = [("celery_reliable", "0009_beat")]
    operations = [migrations.RunPython(upgrade, migrations.RunPython.noop, elidable=False)]
