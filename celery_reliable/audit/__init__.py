"""The audit behind ``celery reliable check`` and ``report``: the production-readiness
gates (``gates``; ``celery_reliable.gates`` is kept as the documented import path) and
each task's reliability report (``reports``).

Reads the app's configuration and task classes (and, for ``report``, the store): it
changes nothing, and nothing that runs a task imports it.
"""
