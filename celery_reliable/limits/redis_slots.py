"""Limits kept in Redis: one Lua script to take every slot a job needs, one to give
them back, one to renew them (each one round trip, atomic, timed by Redis's clock).

Per limit, six keys sharing one hash tag (``{concurrency:erp}``):

* ``used``: a sorted set. ``concurrency``: one member per holder, scored by the end of
  its lease (a holder that dies frees its slot when the lease ends). ``rate``: one
  member per start, scored by its time; starts older than ``per`` are dropped (a
  sliding window: at most ``n`` starts in any ``per`` seconds).
* ``waiters``: jobs that found the limit full, scored by when they first waited (the
  job's own time, carried in its message headers across its waits).
* ``seen``: when each waiter is forgotten if it does not come back: the time it was
  told to come back (when it is *due*) + ``FORGET_AFTER_MS``.
* ``avg``: the mean time a slot is held (moving average), for a concurrency wait.
* ``keep``: from when each waiter keeps a free slot from newer jobs: when it was told
  to wait if its turn is in the next round, else when it is due.
* ``pace``: a hash, for a concurrency wait: ``gap``, the mean time between two takes;
  ``last``, the last take; ``refused``, the last time a job was turned away.

A job may take a free slot when fewer waiters ahead of it keep one than there are free
slots (the next in line, and those due and not long overdue: a sleeper further back
keeps nothing). One that cannot is told how long to wait: for ``rate``, until the
start that frees its turn leaves the window; for ``concurrency``, by the ideal
turnover and the measured one. How and why: ``parts.py``, whose functions the script
mirrors (same constants, same arithmetic), as the SQL backend calls them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery_reliable.errors import LimitsUnavailable
from celery_reliable.limits.parts import (
    DEFAULT_MEAN_MS,
    EARLY,
    FORGET_AFTER_MS,
    LATE_MS,
    LOOK,
    MIN_WAIT_MS,
    SLOWEST,
    WEIGHT,
    Full,
    Part,
    Taken,
    tiebreak,
)

_TAKE = """
local FORGET, LATE, LOOK, EARLY, SLOWEST = @FORGET@, @LATE@, @LOOK@, @EARLY@, @SLOWEST@
local DEFAULT_MEAN, MIN_WAIT, WEIGHT = @DEFAULT_MEAN@, @MIN_WAIT@, @WEIGHT@
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, token = ARGV[1], ARGV[3]
local since = tonumber(ARGV[2])
if since <= 0 or since > now then since = now end
-- The place in line: microseconds, the last three digits the job's own (ARGV[4]), so
-- two jobs that first waited in the same millisecond are still in a strict order.
local line = since * 1000 + tonumber(ARGV[4])
local count = #KEYS / 6
local wait, blocked, head = 0, {}, {}
for i = 0, count - 1 do
  local used, waiters, seen, avg = KEYS[i*6+1], KEYS[i*6+2], KEYS[i*6+3], KEYS[i*6+4]
  local keep, pace = KEYS[i*6+5], KEYS[i*6+6]
  local kind, n, span = ARGV[i*3+5], tonumber(ARGV[i*3+6]), tonumber(ARGV[i*3+7])
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', used, '-inf', now)
  else
    redis.call('ZREMRANGEBYSCORE', used, '-inf', now - span)
  end
  local gone = redis.call('ZRANGEBYSCORE', seen, '-inf', now)
  for _, w in ipairs(gone) do
    redis.call('ZREM', waiters, w)
    redis.call('ZREM', seen, w)
    redis.call('ZREM', keep, w)
  end
  local mine = redis.call('ZSCORE', waiters, me)
  local place = line
  if mine then place = tonumber(mine) end
  -- string.format, not '..': Lua prints a number with 14 digits, and a place has 16.
  local before = '(' .. string.format('%.0f', place)
  local holding = redis.call('ZCARD', used)
  local free = n - holding
  local keeping = 0
  if free > 0 then
    -- A free slot is kept only for the waiters ahead that keep one now (parts.py),
    -- among the LOOK oldest: bounded work however long the line.
    local older = redis.call('ZRANGEBYSCORE', waiters, '-inf', before, 'LIMIT', 0, LOOK)
    for _, w in ipairs(older) do
      local forget = redis.call('ZSCORE', seen, w)
      if forget then
        local due = tonumber(forget) - FORGET
        local from = tonumber(redis.call('ZSCORE', keep, w) or due)
        if from <= now and now <= due + LATE then
          keeping = keeping + 1
          if keeping >= free then break end
        end
      end
    end
  end
  if free <= keeping then
    local position = redis.call('ZCOUNT', waiters, '-inf', before) - free
    if position < 0 then position = 0 end
    local w
    if kind == 'c' then
      -- parts.concurrency_wait
      local mean = tonumber(redis.call('GET', avg) or DEFAULT_MEAN)
      local ideal = mean / n
      local gap = tonumber(redis.call('HGET', pace, 'gap') or ideal)
      if gap < ideal then gap = ideal elseif gap > SLOWEST * ideal then gap = SLOWEST * ideal end
      w = mean
      if position >= n then
        w = math.max(mean * (math.floor(position / n) + 1), EARLY * (position + 1) * gap)
      end
      redis.call('HSET', pace, 'refused', now)
      redis.call('PEXPIRE', pace, 86400000)
    elseif holding > 0 then
      local index = position % holding
      local first = redis.call('ZRANGE', used, index, index, 'WITHSCORES')
      w = tonumber(first[2]) + span * (math.floor(position / holding) + 1) - now
    else
      w = span * (math.floor(position / n) + 1)
    end
    if w > wait then wait = w end
    blocked[#blocked + 1] = i
    head[#head + 1] = position < n
  end
end
if #blocked > 0 then
  if wait < MIN_WAIT then wait = MIN_WAIT end
  wait = math.floor(wait)
  for j, i in ipairs(blocked) do
    redis.call('ZADD', KEYS[i*6+2], 'NX', string.format('%.0f', line), me)
    redis.call('ZADD', KEYS[i*6+3], now + wait + FORGET, me)
    -- Next in line keeps a free slot from now on; further back, once it is due.
    if head[j] then
      redis.call('ZADD', KEYS[i*6+5], now, me)
    else
      redis.call('ZADD', KEYS[i*6+5], now + wait, me)
    end
  end
  return {0, wait, blocked[1] + 1, since}
end
for i = 0, count - 1 do
  local used, waiters, seen, keep = KEYS[i*6+1], KEYS[i*6+2], KEYS[i*6+3], KEYS[i*6+5]
  local kind, n, span = ARGV[i*3+5], tonumber(ARGV[i*3+6]), tonumber(ARGV[i*3+7])
  if kind == 'c' then
    redis.call('ZADD', used, now + span, token)
    -- parts.next_gap: an interval is a sample when a job was turned away during it.
    local pace = KEYS[i*6+6]
    local got = redis.call('HMGET', pace, 'gap', 'last', 'refused')
    local gap, last, refused = tonumber(got[1]), tonumber(got[2]), tonumber(got[3])
    if last and refused and refused >= last then
      local mean = tonumber(redis.call('GET', KEYS[i*6+4]) or DEFAULT_MEAN)
      local sample = math.min(math.max(now - last, 0), SLOWEST * mean / n)
      if gap then gap = gap * (1 - WEIGHT) + sample * WEIGHT else gap = sample end
      redis.call('HSET', pace, 'gap', gap)
    end
    redis.call('HSET', pace, 'last', now)
    redis.call('PEXPIRE', pace, 86400000)
  else
    redis.call('ZADD', used, now, token)
    redis.call('PEXPIRE', used, span + 1000)
  end
  redis.call('ZREM', waiters, me)
  redis.call('ZREM', seen, me)
  redis.call('ZREM', keep, me)
end
return {1, now}
"""
for _name, _value in {
    "FORGET": FORGET_AFTER_MS,
    "LATE": LATE_MS,
    "LOOK": LOOK,
    "EARLY": EARLY,
    "SLOWEST": SLOWEST,
    "DEFAULT_MEAN": DEFAULT_MEAN_MS,
    "MIN_WAIT": MIN_WAIT_MS,
    "WEIGHT": WEIGHT,
}.items():  # parts.py's constants, so the script and the SQL backend cannot drift
    _TAKE = _TAKE.replace(f"@{_name}@", repr(_value))

_GIVE_BACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS, 2 do
  if redis.call('ZREM', KEYS[i], ARGV[1]) == 1 then
    local held = now - tonumber(ARGV[2])
    if held < 0 then held = 0 end
    local mean = redis.call('GET', KEYS[i + 1])
    if mean then held = tonumber(mean) * 0.8 + held * 0.2 end
    redis.call('SET', KEYS[i + 1], math.floor(held), 'PX', 86400000)
  end
end
return 1
"""

_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kept = 0
for i = 1, #KEYS do
  if redis.call('ZSCORE', KEYS[i], ARGV[1]) then
    redis.call('ZADD', KEYS[i], now + tonumber(ARGV[i + 1]), ARGV[1])
    kept = kept + 1
  end
end
return kept
"""

#: Prefix of every key.
PREFIX = "reliable:limits:"


def _names(part: Part) -> tuple[str, str, str, str, str, str]:
    """The six keys of one limit, under one hash tag."""
    base = f"{PREFIX}{{{part.key}}}"
    return (
        f"{base}:used",
        f"{base}:waiters",
        f"{base}:seen",
        f"{base}:avg",
        f"{base}:keep",
        f"{base}:pace",
    )


class RedisSlots:
    """Slots in one Redis, shared by every worker of every app that names it."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        self._take = self.client.register_script(_TAKE)
        self._give_back = self.client.register_script(_GIVE_BACK)
        self._renew = self.client.register_script(_RENEW)

    def _unavailable(self, doing: str, exc: Exception) -> LimitsUnavailable:
        from kombu.utils.url import maybe_sanitize_url

        return LimitsUnavailable(
            f"limits: {doing} in Redis at {maybe_sanitize_url(self.url)} failed "
            f"({type(exc).__name__}: {exc}); is that Redis up? (reliable_limits_url, else "
            "the broker's)"
        )

    def take(self, me: str, since_ms: int, token: str, parts: Sequence[Part]) -> Taken | Full:
        keys: list[str] = []
        args: list[Any] = [me, since_ms, token, tiebreak(me)]
        for part in parts:
            keys.extend(_names(part))
            args.extend((part.kind, part.n, part.span_ms))
        try:
            answer = self._take(keys=keys, args=args)
        except self._errors as exc:
            raise self._unavailable("taking a slot", exc) from exc
        if int(answer[0]) == 1:
            return Taken(int(answer[1]))
        return Full(int(answer[1]), int(answer[2]) - 1, int(answer[3]))

    def give_back(self, token: str, at_ms: int, parts: Sequence[Part]) -> None:
        keys: list[str] = []
        for part in parts:
            if part.kind == "c":
                used, _, _, avg, _, _ = _names(part)
                keys.extend((used, avg))
        if not keys:
            return
        try:
            self._give_back(keys=keys, args=[token, at_ms])
        except self._errors as exc:
            raise self._unavailable("giving a slot back", exc) from exc

    def renew(self, token: str, parts: Sequence[Part]) -> int:
        """Push the lease of this holder's concurrency slots; how many it still held."""
        held = [part for part in parts if part.kind == "c"]
        if not held:
            return 0
        try:
            kept = self._renew(
                keys=[_names(part)[0] for part in held],
                args=[token, *(part.span_ms for part in held)],
            )
        except self._errors as exc:
            raise self._unavailable("renewing a slot", exc) from exc
        return int(kept)

    def holders(self, part: Part) -> int:
        """How many hold (concurrency) or started within the window (rate) now."""
        used = _names(part)[0]
        try:
            return int(self.client.zcard(used))
        except self._errors as exc:
            raise self._unavailable("counting holders", exc) from exc

    def close(self) -> None:
        self.client.close()
