"""Tasks under global limits, for real prefork workers (tests/integration/test_limits.py).

What really runs at once is counted outside the product: each body adds itself to a
Redis counter when it starts and removes itself when it ends, and a Lua script keeps
the highest value the counter reached. Starts are recorded with Redis's clock.
"""

from __future__ import annotations

import time

import redis

from celery_reliable import ReliableTask
from celery_reliable.execution import current_execution
from celery_reliable.limits import concurrency, rate
from tests.support.apps.config import helper_app
from tests.support.outcomes import record_outcomes_to

app = helper_app("limits_app", defaults={"worker_prefetch_multiplier": 1})
record_outcomes_to(app.conf.broker_url)
effects = redis.Redis.from_url(app.conf.broker_url)

#: INCR the running count and keep its highest value: one atomic step.
_ENTER = effects.register_script(
    """
local now = redis.call('INCR', KEYS[1])
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
if now > top then redis.call('SET', KEYS[2], now) end
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[3], ARGV[1] .. ' ' .. t[1] .. '.' .. string.format('%06d', t[2]))
return now
"""
)


def enter(run: str, job: str) -> None:
    _ENTER(keys=[f"running:{run}", f"top:{run}", f"starts:{run}"], args=[job])


def leave(run: str) -> None:
    effects.decr(f"running:{run}")


@app.task(
    base=ReliableTask,
    shared=False,  # limited tasks in every later app would stop non-Redis workers
    name="lim.erp",
    bind=True,
    timeout=30,
    limits=[concurrency(3, key="erp:{run}")],
)
def erp(self: ReliableTask, run: str, seconds: float) -> str:
    enter(run, str(self.request.id))
    try:
        time.sleep(seconds)
    finally:
        leave(run)
    return "done"


@app.task(
    base=ReliableTask,
    shared=False,  # limited tasks in every later app would stop non-Redis workers
    name="lim.api",
    bind=True,
    timeout=30,
    limits=[rate(4, per=1, key="api:{run}")],
)
def api(self: ReliableTask, run: str) -> str:
    # The window is the limit's: when each slot was taken (Redis's clock, in ms, as the
    # take script read it), not when the body got to run after the take.
    execution = current_execution()
    assert execution is not None and execution.held is not None
    effects.rpush(f"takes:{run}", f"{self.request.id} {execution.held.at_ms / 1000:.3f}")
    enter(run, str(self.request.id))
    leave(run)
    return "done"


@app.task(
    base=ReliableTask,
    shared=False,  # limited tasks in every later app would stop non-Redis workers
    name="lim.one",
    bind=True,
    timeout=30,
    limits=[concurrency(1, key="one:{run}")],
)
def one(self: ReliableTask, run: str, seconds: float) -> str:
    enter(run, str(self.request.id))
    try:
        time.sleep(seconds)
    finally:
        leave(run)
    return "done"


@app.task(
    base=ReliableTask,
    shared=False,  # limited tasks in every later app would stop non-Redis workers
    name="lim.beating",
    bind=True,
    timeout=120,
    heartbeat_timeout=1,
    limits=[concurrency(1, key="beating:{run}")],
)
def beating(self: ReliableTask, run: str, seconds: float) -> str:
    """Holds its slot for ``seconds``, beating: its lease (1 + 2 + 5 s) is renewed."""
    enter(run, str(self.request.id))
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.heartbeat()
            time.sleep(0.2)
    finally:
        leave(run)
    return "done"
