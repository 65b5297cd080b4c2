"""Batches (DESIGN §4): ``with Batch(on_complete=sig, on_success=sig) as batch:``.

* ``batch``: the block; its publishes are the members, stamped with the batch's id
  (a wrapper of the app's ``send_task_message``, as the outbox's).
* ``ending``: a member's end counted once per task id, and the callbacks fired
  through the outbox by whichever writer completes the batch (``store/batches.py``).
"""

from __future__ import annotations

from celery_reliable.batches import ending as _ending  # noqa: F401  (connects)
from celery_reliable.batches.batch import Batch, current_batch

__all__ = ["Batch", "current_batch"]
