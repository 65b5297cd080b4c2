"""How many chaos bodies really run at once, counted outside the product and robust to
SIGKILL: the ``limits`` mode's witness of ``concurrency(n)``.

A counter that a body increments when it starts and decrements when it ends is wrong
the first time a worker is SIGKILLed: the killed body never decrements, and every
count after it is one too high. Here each running body keeps a member of its own
fresh in a sorted set (score: Redis's clock, in ms) instead:

* at its start, one Lua script adds it and counts the members fresher than
  ``WINDOW_MS``, itself included, and keeps the highest count seen (``top``);
* a thread of the body re-scores its member every ``REFRESH_S``;
* at its end (normal or by an exception) another script removes it.

All times are one Redis's clock (a server of the run's own, never restarted: not the
broker, whose restart is one of the faults), so no two clocks are compared.

Why a killed body cannot create a false overlap: its member stays fresh for at most
``WINDOW_MS`` after its last refresh (0.3 s), but its concurrency slot is a lease the
product keeps for the task's hard time limit + 5 s after the take (15 s for the chaos
job, whose hard limit kills a body long before), so no other body can take that slot
and start while the dead member is still counted. A body that ends normally removes its
member before its execution gives the slot back (the body returns first), so its
successor never sees it either.

Why a real overlap cannot hide: a member goes stale while its body still runs only if
the refresh thread is stalled for longer than ``WINDOW_MS`` (three refresh periods).
Each refresh, and the removal at the end, checks how old the member's previous score
was and counts such a stall in ``gaps``; the run fails on any. A stall followed, in the
same 0.3 s, by the SIGKILL of that body is the one case no script sees; a body that
sleeps 0-0.1 s and makes three Redis calls is not stalled for 0.3 s but by a machine
that is itself stalled, and then the next refresh of every other body counts a gap.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

#: A member older than this is a body that no longer runs (ms).
WINDOW_MS = 300
#: How often a running body re-scores its member (s): a third of the window.
REFRESH_S = 0.1
#: Stale members (killed bodies) are dropped after this long (ms); a run is shorter, so
#: those left at its end are the bodies killed while they ran.
FORGET_MS = 3_600_000

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS: live, top, starts. ARGV: member, window, forget. Returns the count at once.
_ENTER = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[3]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
local here = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
if here > top then redis.call('SET', KEYS[2], here) end
redis.call('INCR', KEYS[3])
return here
"""
)

#: KEYS: live, gaps, top. ARGV: member, window. Re-scores the member if it is still
#: there; one that had gone stale is a gap, and the bodies at once are counted again.
_REFRESH = (
    _NOW
    + """
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not last then return 0 end
redis.call('ZADD', KEYS[1], now, ARGV[1])
if now - tonumber(last) > tonumber(ARGV[2]) then
  redis.call('INCR', KEYS[2])
  local here = redis.call('ZCOUNT', KEYS[1], now - tonumber(ARGV[2]), '+inf')
  local top = tonumber(redis.call('GET', KEYS[3]) or '0')
  if here > top then redis.call('SET', KEYS[3], here) end
end
return 1
"""
)

#: KEYS: live, gaps, done. ARGV: member, window, job, completed (1/0).
_LEAVE = (
    _NOW
    + """
local last = redis.call('ZSCORE', KEYS[1], ARGV[1])
if last and now - tonumber(last) > tonumber(ARGV[2]) then redis.call('INCR', KEYS[2]) end
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[3], ARGV[3], 1) end
return 1
"""
)


@dataclass(frozen=True)
class Keys:
    live: str = "at_once:live"
    top: str = "at_once:top"
    starts: str = "at_once:starts"
    gaps: str = "at_once:gaps"
    done: str = "at_once:done"
    limited: str = "at_once:limited"


KEYS = Keys()


class Tally:
    """The body's side: ``with tally.running(job): ...`` around the body's work."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self._enter = self.client.register_script(_ENTER)
        self._refresh = self.client.register_script(_REFRESH)
        self._leave = self.client.register_script(_LEAVE)

    @contextmanager
    def running(self, job: int) -> Iterator[None]:
        # The worker's process group in the member: the run can aim a kill at a worker
        # whose body holds a slot (``a_body_just_started``).
        member = f"{job}:{os.getpgid(0)}:{uuid.uuid4().hex[:12]}"
        self._enter(keys=[KEYS.live, KEYS.top, KEYS.starts], args=[member, WINDOW_MS, FORGET_MS])
        stop = threading.Event()
        refresher = threading.Thread(target=self._keep_fresh, args=(member, stop), daemon=True)
        refresher.start()
        completed = False
        try:
            yield
            completed = True
        finally:
            stop.set()
            refresher.join()
            self._leave(
                keys=[KEYS.live, KEYS.gaps, KEYS.done],
                args=[member, WINDOW_MS, job, 1 if completed else 0],
            )

    def _keep_fresh(self, member: str, stop: threading.Event) -> None:
        while not stop.wait(REFRESH_S):
            self._refresh(keys=[KEYS.live, KEYS.gaps, KEYS.top], args=[member, WINDOW_MS])

    def count_limited(self) -> None:
        self.client.incr(KEYS.limited)


@dataclass(frozen=True)
class Counted:
    """What the tally saw over a run."""

    top: int
    starts: int
    gaps: int
    #: Jobs whose body ran to its end more than once.
    completed_twice: int
    #: Executions that ended SNOOZED waiting for a slot (``limited``).
    limited: int
    #: Bodies that never left: killed while they ran, holding a slot.
    killed: int


def a_body_just_started(url: str, within: float) -> int | None:
    """The process group (one per worker) of a body that started in the last few ms,
    waiting up to ``within`` seconds for one; ``None`` when none started.

    A kill aimed at any body seen running could land after it ended (a chaos body runs
    for 0.1 s at most, and most of the run's time is spent waiting for slots); one that
    appeared between two looks 10 ms apart still has most of its body to run."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        seen = set(client.zrange(KEYS.live, 0, -1))
        until = time.monotonic() + within
        while time.monotonic() < until:
            time.sleep(0.01)
            now = set(client.zrange(KEYS.live, 0, -1))
            new = now - seen
            if new:
                return int(min(new).split(b":")[1])
            seen = now
        return None
    finally:
        client.close()


def read(url: str) -> Counted:
    client = redis.Redis.from_url(url)
    try:
        done = client.hgetall(KEYS.done)
        return Counted(
            top=int(client.get(KEYS.top) or 0),
            starts=int(client.get(KEYS.starts) or 0),
            gaps=int(client.get(KEYS.gaps) or 0),
            completed_twice=sum(1 for n in done.values() if int(n) > 1),
            limited=int(client.get(KEYS.limited) or 0),
            killed=int(client.zcard(KEYS.live)),
        )
    finally:
        client.close()
