"""The example shop's settings, plus the crash tests' task and a worker tuned to notice
a dead child quickly (DATABASE_URL and REDIS_URL come from the test)."""

from shop.settings import *  # noqa: F403

CELERY_IMPORTS = ["tests.support.apps.django_crash.tasks"]
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 5}
# How long the worker waits for a dead child's result before WorkerLostError.
CELERY_WORKER_LOST_WAIT = 1.0
CELERY_RELIABLE_STATSD_HOST = None
