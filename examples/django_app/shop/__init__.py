"""The example shop: a Django project whose Celery tasks are ReliableTasks."""

# Load the Celery app when Django starts, so that @shared_task binds to it.
from shop.celery import app as celery_app

__all__ = ("celery_app",)
