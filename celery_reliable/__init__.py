"""celery_reliable: one explicit outcome per Celery task execution.

Public names only; see ``docs/`` for the guide.
"""

from celery_reliable.outcomes import Cancel, Discard, Outcome, Snooze
from celery_reliable.policy import cancel_on, discard_on, retry_on
from celery_reliable.task import ReliableTask

__all__ = [
    "Cancel",
    "Discard",
    "Outcome",
    "ReliableTask",
    "Snooze",
    "cancel_on",
    "discard_on",
    "retry_on",
]

__version__ = "0.1.0"
