"""celery_reliable: one explicit outcome per Celery task execution.

Public names only (and the two imports that connect our receivers of Celery's
signals); see ``docs/`` for the guide.
"""

# Every process that imports celery_reliable stamps the publish time on what it sends,
# and a worker process answers Celery's worker signals (a worker of an app with rules
# declared on a plain task is refused at start even with no ReliableTask at all).
from celery_reliable.batches import Batch
from celery_reliable.delivery import sent_at as _sent_at  # noqa: F401  (connects)
from celery_reliable.errors import HeartbeatTimeout
from celery_reliable.outcomes import Cancel, Discard, Outcome, Snooze
from celery_reliable.policy import cancel_on, discard_on, retry_on
from celery_reliable.task import ReliableTask
from celery_reliable.worker import receivers as _receivers  # noqa: F401  (connects)

__all__ = [
    "Batch",
    "Cancel",
    "Discard",
    "HeartbeatTimeout",
    "Outcome",
    "ReliableTask",
    "Snooze",
    "cancel_on",
    "discard_on",
    "retry_on",
]

__version__ = "0.1.0"
