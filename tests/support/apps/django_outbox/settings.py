"""The crash tests' shop settings, with ``CELERY_RELIABLE_OUTBOX = True``: a
ReliableTask's ``delay()`` inside ``transaction.atomic()`` goes through the outbox."""

from tests.support.apps.django_crash.settings import *  # noqa: F403

CELERY_RELIABLE_OUTBOX = True
