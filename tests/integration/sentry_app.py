"""The app a real prefork ``celery worker`` runs for the Sentry tests, with Sentry
initialised the way users do it (at import, before the pool forks), with sentry-sdk's
CeleryIntegration on or off (``TEST_SENTRY_CELERY``)."""

from __future__ import annotations

import os

import sentry_sdk
from celery import Celery
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.dedupe import DedupeIntegration

from tests.integration.recording import record_outcomes_to
from tests.integration.sentry_tasks import define

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

app = Celery("sentry_app", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    reliable_database_url=os.environ["RELIABLE_TEST_STORE"],
    reliable_statsd_host="127.0.0.1",
    reliable_statsd_port=int(os.environ["TEST_STATSD_PORT"]),
)
record_outcomes_to(BROKER)
tasks = define(app, "sentry")


@app.on_after_finalize.connect
def _check_integration(sender: Celery, **_: object) -> None:
    active = sentry_sdk.get_client().get_integration(CeleryIntegration) is not None
    assert active is MODE.startswith("on"), "Sentry set up wrongly"
