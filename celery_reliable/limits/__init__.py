"""Flow control across every worker: ``limits=[concurrency(...), rate(...)]``.

* ``spec.py``: the public ``concurrency`` and ``rate``, checked when the task class is
  built, and a task's limits compiled once per class (pure: no Redis, no SQL).
* ``slots.py``: one execution's take and give back, over a backend:
  ``redis_slots.py`` (Lua, one round trip each) or ``store/limits.py`` (the store).
* ``exiting.py``: what a process still owes a backend when it exits (the answers to
  its last Redis give backs).
* ``pause.py``: pausing a queue or a task on every worker (``celery reliable pause``);
  the workers' side is ``worker/pauses.py``.
"""

from __future__ import annotations

from celery_reliable.limits.spec import Concurrency, Limit, Rate, concurrency, rate

__all__ = ["Concurrency", "Limit", "Rate", "concurrency", "rate"]
