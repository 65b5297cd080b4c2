"""What waits in the broker's Redis to be counted as batch members' endings
(``celery_reliable/batches/tally.py``), as a test reads it."""

from __future__ import annotations

from typing import Any

from celery_reliable.batches.tally import decode, endings_list_for


def held_endings(app: Any) -> list[str]:
    """Task ids of the endings the app's workers' counters hold (taken, not yet
    counted: the store did not answer, or the worker died holding them)."""
    endings = endings_list_for(app)
    assert endings is not None, "the app's endings are not grouped in Redis"
    client = endings.client()
    found = []
    for key in client.scan_iter(match=f"{endings.key}.taking.*"):
        found += [e.task_id for e in map(decode, client.lrange(key, 0, -1)) if e is not None]
    return found
