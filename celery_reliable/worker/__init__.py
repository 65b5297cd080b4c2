"""What only a worker process does: the bootstep (``bootstep``) that checks the
settings at start-up and prunes the store, the receivers of Celery's worker signals
(``receivers``: pool children's history, shutdown, the executions the main process
ends), their ``FAILED`` outcomes (``external_failures``), the heartbeat monitor's kill
of a stuck body and its outcome (``stuck``) and the queue-depth sampler (``sampler``).

Nothing below imports this package: the bootstep is added to an app by its dotted
name (``wiring.install``), and ``celery_reliable/__init__.py`` connects the receivers.
"""
