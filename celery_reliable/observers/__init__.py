"""Subscribers of ``task_outcome``: logging, StatsD, Sentry.

Imported only by ``celery_reliable.wiring``. An observer never breaks a task: what
it raises is logged and swallowed, and a server that is down costs only the report.
"""
