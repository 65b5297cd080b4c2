import pytest
from shop.celery import app

# Publishing in tests goes nowhere: celery_reliable's plugin keeps each message for
# assert_enqueued and drain, and no worker consumes them.
app.conf.broker_url = "memory://"
app.conf.result_backend = "cache+memory://"


@pytest.fixture
def reliable_app():
    """The app celery_reliable's fixtures (reliable_db, statsd_lines) set up."""
    return app
