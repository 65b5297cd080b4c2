"""Limits kept in Redis: one Lua script to take every slot a job needs, one to give
them back, one to renew them (each one round trip, atomic, timed by Redis's clock).

Per limit, four keys sharing one hash tag (``{concurrency:erp}``):

* ``used``: a sorted set. ``concurrency``: one member per holder, scored by the end of
  its lease (a holder that dies frees its slot when the lease ends). ``rate``: one
  member per start, scored by its time; starts older than ``per`` are dropped (a
  sliding window: at most ``n`` starts in any ``per`` seconds).
* ``waiters``: jobs that found the limit full, scored by when they first waited (the
  job's own time, carried in its message headers across its waits). A job may take a
  free slot only when fewer older jobs are waiting than there are free slots: the
  oldest waiter goes first, so no job starves behind newer ones.
* ``seen``: when each waiter is forgotten if it does not come back (its wait + 30 s):
  a waiter whose message was lost does not hold the line for ever.
* ``avg``: the mean time a slot is held (moving average), for a concurrency wait.

A job that cannot take is told how long to wait: for ``rate``, until the start that
frees its turn leaves the window; for ``concurrency``, the mean hold time times the
number of rounds of ``n`` holders ahead of it. Waiters ahead of it wake first, so a
freed slot does not wake everyone at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery_reliable.errors import LimitsUnavailable
from celery_reliable.limits.parts import Full, Part, Taken, tiebreak

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, token = ARGV[1], ARGV[3]
local since = tonumber(ARGV[2])
if since <= 0 or since > now then since = now end
-- The place in line: microseconds, the last three digits the job's own (ARGV[4]), so
-- two jobs that first waited in the same millisecond are still in a strict order.
local line = since * 1000 + tonumber(ARGV[4])
local count = #KEYS / 4
local wait, blocked = 0, {}
for i = 0, count - 1 do
  local used, waiters, seen, avg = KEYS[i*4+1], KEYS[i*4+2], KEYS[i*4+3], KEYS[i*4+4]
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
  end
  local mine = redis.call('ZSCORE', waiters, me)
  local place = line
  if mine then place = tonumber(mine) end
  -- string.format, not '..': Lua prints a number with 14 digits, and a place has 16.
  local ahead = redis.call('ZCOUNT', waiters, '-inf', '(' .. string.format('%.0f', place))
  local holding = redis.call('ZCARD', used)
  local free = n - holding
  if free <= ahead then
    local position = ahead - free
    local w
    if kind == 'c' then
      local mean = tonumber(redis.call('GET', avg) or '1000')
      w = mean * (math.floor(position / n) + 1)
    elseif holding > 0 then
      local index = position % holding
      local first = redis.call('ZRANGE', used, index, index, 'WITHSCORES')
      w = tonumber(first[2]) + span * (math.floor(position / holding) + 1) - now
    else
      w = span * (math.floor(position / n) + 1)
    end
    if w > wait then wait = w end
    blocked[#blocked + 1] = i
  end
end
if #blocked > 0 then
  if wait < 50 then wait = 50 end
  for _, i in ipairs(blocked) do
    redis.call('ZADD', KEYS[i*4+2], 'NX', string.format('%.0f', line), me)
    redis.call('ZADD', KEYS[i*4+3], now + wait + 30000, me)
  end
  return {0, math.floor(wait), blocked[1] + 1, since}
end
for i = 0, count - 1 do
  local used = KEYS[i*4+1]
  local kind, span = ARGV[i*3+5], tonumber(ARGV[i*3+7])
  if kind == 'c' then
    redis.call('ZADD', used, now + span, token)
  else
    redis.call('ZADD', used, now, token)
    redis.call('PEXPIRE', used, span + 1000)
  end
  redis.call('ZREM', KEYS[i*4+2], me)
  redis.call('ZREM', KEYS[i*4+3], me)
end
return {1, now}
"""

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


def _names(part: Part) -> tuple[str, str, str, str]:
    """The four keys of one limit, under one hash tag."""
    base = f"{PREFIX}{{{part.key}}}"
    return f"{base}:used", f"{base}:waiters", f"{base}:seen", f"{base}:avg"


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
                used, _, _, avg = _names(part)
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
