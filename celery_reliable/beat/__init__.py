"""Periodic jobs published once per due time, by any number of beat processes
(DESIGN §4, "Enqueue exactly once").

``beat_scheduler = "celery_reliable.beat:Scheduler"`` (or ``celery beat -S
celery_reliable.beat:Scheduler``) reads the ordinary ``beat_schedule``:

* ``timeline``: each entry's slots (due times), the same on every process;
* ``scheduler``: the scheduler, claiming each slot in the store before publishing it
  (``store/beat.py``), catching up the slots missed while no beat ran;
* ``status``: each entry's last and next run, for the web view and ``report``.
"""

from __future__ import annotations

from celery_reliable.beat.scheduler import Scheduler

__all__ = ["Scheduler"]
