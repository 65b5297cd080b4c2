"""The helper apps real ``celery worker`` (and ``celery reliable``) processes run in the
tests, each configured from the environment by :func:`tests.support.apps.config.helper_app`."""
