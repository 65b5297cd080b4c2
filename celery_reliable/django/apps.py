"""The Django app of celery_reliable: its migrations create the store's tables."""

from __future__ import annotations

from django.apps import AppConfig


class CeleryReliableConfig(AppConfig):
    name = "celery_reliable.django"
    label = "celery_reliable"
    verbose_name = "celery_reliable"
