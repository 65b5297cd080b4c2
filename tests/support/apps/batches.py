"""The app of the batch tests with real ``celery worker`` processes
(``tests/integration/test_batches_processes.py``): prefork workers on Redis with a
short ``visibility_timeout`` and rescue, ``acks_late``, one message at a time.

* ``bp.gate(key)``: blocks on ``BLPOP gate:{key}``: the test releases the last members
  of a batch at one instant, each on its own worker.
* ``bp.victim(key, point)``: on its first run, says where it stands and waits to be
  SIGKILLed: inside its body (``point="body"``), or once its end was counted
  (``point="ended"``: a ``task_outcome`` receiver connected after the batch's own,
  before the message is acked). Later runs end at once.
* ``bp.stuck(key)``: its first run outlasts its hard time limit.
* ``bp.collect(summary, label)``: keeps each summary it gets in Redis.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis

from celery_reliable import ReliableTask
from celery_reliable.signals import OutcomeEvent, task_outcome
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

app = helper_app(
    "batches_app",
    broker_transport_options={"visibility_timeout": 4.0},
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    reliable_rescue_interval=0.5,
)

effects = redis.Redis.from_url(app.conf.broker_url)
record_outcomes_to(app.conf.broker_url)


@app.task(base=ReliableTask, bind=True, name="bp.gate", timeout=60)
def gate(self: ReliableTask, key: str) -> str:
    effects.rpush(f"started:{key}", os.getpgrp())
    effects.blpop([f"gate:{key}"], timeout=50)
    return key


@app.task(base=ReliableTask, bind=True, name="bp.step", timeout=60)
def step(self: ReliableTask, key: str) -> str:
    effects.incr(f"runs:{key}")
    time.sleep(0.05)
    return key


@app.task(base=ReliableTask, bind=True, name="bp.victim", timeout=60)
def victim(self: ReliableTask, key: str, point: str) -> str:
    if effects.incr(f"runs:{key}") == 1 and point == "body":
        _wait_for_the_kill(key)
    return key


def _wait_for_the_kill(key: str) -> None:
    effects.set(f"at-kill-point:{key}", os.getpgrp())
    time.sleep(50)  # SIGKILLed here


def _after_the_count(sender: Any = None, event: OutcomeEvent | None = None, **_: Any) -> None:
    """Connected after the batch's receiver: its end is counted, its message not acked."""
    if event is None or event.task_name != "bp.victim":
        return
    key, point = event.request.args
    if point == "ended" and int(effects.get(f"runs:{key}") or 0) == 1:
        _wait_for_the_kill(key)


task_outcome.connect(_after_the_count, weak=False)


@app.task(base=ReliableTask, bind=True, name="bp.stuck", time_limit=1.5)
def stuck(self: ReliableTask, key: str) -> str:
    """Its first run outlasts its hard time limit: the worker's main process ends it."""
    if effects.incr(f"runs:{key}") == 1:
        effects.set(f"stuck:{key}", 1)
        time.sleep(30)
    return key


@app.task(base=ReliableTask, bind=True, name="bp.collect", timeout=30)
def collect(self: ReliableTask, summary: dict[str, Any], label: str) -> None:
    effects.rpush(f"got:{label}", json.dumps(summary))
