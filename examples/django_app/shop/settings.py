"""Settings of the example shop.

``DATABASE_URL`` and ``REDIS_URL`` name the servers (PostgreSQL and Redis in
production); without them the shop runs on embedded defaults: SQLite files under
``SHOP_DATA_DIR`` (``data/`` here) for the database, Celery's broker and its results.
"""

import os
from pathlib import Path

import dj_database_url
import sentry_sdk

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("SHOP_DATA_DIR", BASE_DIR / "data"))
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-shop-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["localhost", "127.0.0.1", "testserver"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "celery_reliable.django",  # the store's tables, migrated with the shop's own
    "orders",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "shop.urls"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{DATA_DIR / 'shop.sqlite3'}", conn_max_age=0
    )
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Workers and web processes write at once: wait for the lock, take it at BEGIN.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    # celery_reliable reaches the database with connections of its own, so the test
    # database is a file, not Django's default in-memory one.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test_shop.sqlite3")}

EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", str(DATA_DIR / "mail"))
DEFAULT_FROM_EMAIL = "shop@example.com"

if os.environ.get("SENTRY_DSN"):
    # Read by the web processes and the workers alike (shop/celery.py loads these).
    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], traces_sample_rate=0)

# The payment gateway and the warehouse: fakes, so that the example runs anywhere.
SHOP_GATEWAY_FAULTS: dict[str, list[str]] = {}
SHOP_WAREHOUSE_BUSY_UNTIL = float(os.environ.get("SHOP_WAREHOUSE_BUSY_UNTIL", "0"))

# --- Celery (the CELERY_ namespace of shop/celery.py) -----------------------------
REDIS_URL = os.environ.get("REDIS_URL")
CELERY_BROKER_URL = REDIS_URL or f"sqla+sqlite:///{DATA_DIR / 'broker.sqlite3'}"
CELERY_RESULT_BACKEND = REDIS_URL or f"db+sqlite:///{DATA_DIR / 'results.sqlite3'}"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Redis hands an unacknowledged message to another worker after this long: longer than
# any task's hard time limit and any retry's countdown (`celery reliable check` says).
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600} if REDIS_URL else {}
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per process on Redis (acks_late: a long task never holds back
# others). The embedded SQLite broker is polled once a second, and a poll takes only
# what the prefetch window allows: a wider window keeps the pool busy.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1 if REDIS_URL else 10
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
# celery_reliable: receipts, dead letters and unique locks in Django's own database.
CELERY_RELIABLE_DATABASE_URL = "django"
CELERY_RELIABLE_STATSD_HOST = os.environ.get("STATSD_HOST", "127.0.0.1")
CELERY_RELIABLE_STATSD_PORT = int(os.environ.get("STATSD_PORT", "8125"))
CELERY_RELIABLE_STATSD_PREFIX = "shop"
# The web view (shop/asgi.py mounts it at /reliable/): "user:password" for basic auth;
# unset, it answers loopback clients only.
CELERY_RELIABLE_WEB_AUTH = os.environ.get("RELIABLE_WEB_AUTH") or None
CELERY_BEAT_SCHEDULE = {
    "forget-abandoned-orders": {
        "task": "orders.tasks.forget_abandoned_orders",
        "schedule": 3600.0,
    },
}
