"""What the test suite runs against, gathered in one place (``conftest.py`` keeps only
fixtures):

* ``servers``: real Redis, PostgreSQL and RabbitMQ servers on free loopback ports;
* ``statsd``: a UDP socket that keeps every StatsD line; ``sentry``: an HTTP endpoint
  that keeps every Sentry event; ``web``: the web view as a process, and a browser;
  ``metrics_pipeline``: the StatsD daemon, carbon and graphite-web;
* ``celery_apps``: Celery apps on their own Redis database (and queue);
* ``workers``: embedded workers (threads, in this process) and ``celery worker``
  processes, and :func:`~tests.support.workers.settle`, which proves that nothing
  more is coming;
* ``outcomes``: the ``outcomes`` fixture's recorder (built on
  ``celery_reliable.testing.capture_outcomes``) and its twin for worker processes;
* ``store_faults``: a store's batches' tables out of reach for part of a test;
* ``waiting``: :func:`~tests.support.waiting.wait_until`, the one wait of the suite;
* ``apps``: the helper apps worker processes run, configured from the environment by
  one builder (``apps/config.py``).
"""
