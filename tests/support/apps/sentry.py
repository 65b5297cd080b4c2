"""The app a real prefork ``celery worker`` runs for the Sentry tests, with Sentry
initialised the way users do it (at import, before the pool forks), with sentry-sdk's
CeleryIntegration on or off (``TEST_SENTRY_CELERY``)."""

from __future__ import annotations

import os

import redis
import sentry_sdk
from celery import Celery
from celery.signals import worker_process_shutdown, worker_shutdown
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.dedupe import DedupeIntegration

from tests.support.apps.config import helper_app
from tests.support.apps.sentry_tasks import define
from tests.support.outcomes import record_outcomes_to
from tests.support.sentry import FLUSHED

BROKER = os.environ["RELIABLE_TEST_BROKER"]

MODE = os.environ["TEST_SENTRY_CELERY"]
if MODE == "on":
    sentry_sdk.init(dsn=os.environ["TEST_SENTRY_DSN"], integrations=[CeleryIntegration()])
elif MODE == "on-without-dedupe":
    # DedupeIntegration (a default) drops a second event about the exception it saw
    # last, which hides duplicates while one job runs at a time; without it, only
    # celery_reliable's own event processor stands between a job and two events.
    sentry_sdk.init(
        dsn=os.environ["TEST_SENTRY_DSN"],
        integrations=[CeleryIntegration()],
        disabled_integrations=[DedupeIntegration()],
    )
else:
    sentry_sdk.init(dsn=os.environ["TEST_SENTRY_DSN"], disabled_integrations=[CeleryIntegration()])

app = helper_app("sentry_app", reliable_statsd_host="127.0.0.1")
record_outcomes_to(BROKER)
tasks = define(app, "sentry")


def _flush_on_exit(**_: object) -> None:
    sentry_sdk.flush(timeout=10)
    redis.Redis.from_url(BROKER).rpush(FLUSHED, os.getpid())


worker_process_shutdown.connect(_flush_on_exit, weak=False)
worker_shutdown.connect(_flush_on_exit, weak=False)


@app.on_after_finalize.connect
def _check_integration(sender: Celery, **_: object) -> None:
    active = sentry_sdk.get_client().get_integration(CeleryIntegration) is not None
    assert active is MODE.startswith("on"), "Sentry set up wrongly"
