"""The shop's Celery app, as the Celery docs set one up for Django.

Run a worker with ``celery -A shop worker`` and beat with ``celery -A shop beat``;
audit the tasks with ``celery -A shop reliable check``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Celery("shop")
# Every CELERY_* Django setting is a Celery setting: CELERY_TASK_ACKS_LATE is
# task_acks_late, CELERY_RELIABLE_DATABASE_URL is reliable_database_url.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
