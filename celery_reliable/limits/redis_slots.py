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

The calls, as an execution makes them (a take before the body, a give back after):

* a limit set's keys and arguments are rendered once, as bytes (``_Plan``);
* a take is one ``EVALSHA`` on a connection of the process's own, without the
  client's per-call pool checkout and bookkeeping (about 15 µs a call here), with its
  retries of connection errors (the client's ``Retry``); an answer ``NOSCRIPT`` (a
  restarted Redis) loads the scripts and sends it again. A second thread taking at the
  same moment (a threads pool) goes through the client's pool instead of waiting;
* a give back is sent, on a connection of its own, and not waited for: its answer is
  read by the process's next give back (it came long before), or when the process
  exits (``exiting.py``). So the slot is free as soon as the write reaches Redis, and
  the execution pays a write, not a round trip. One whose answer is an error, or
  whose connection broke before its answer was read, is sent again (a give back is
  idempotent: its token leaves the set once); one that still fails is logged, and its
  slots free themselves when their leases end. A failure is thus noticed at the next
  give back or at exit, not at once.

Why not a thread that sends the give backs: on a two-vCPU virtual machine, waking it
and passing the GIL back and forth cost the execution about what the round trip did
(``docs/performance.md``, Limits).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from celery_reliable.errors import LimitsUnavailable
from celery_reliable.limits import exiting
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
    not_given_back,
    tiebreak,
)

if TYPE_CHECKING:
    from redis.connection import Connection, ConnectionPool

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
local wait, blocked, head, lined = 0, {}, {}, {}
for i = 0, count - 1 do
  local used, waiters, seen, avg = KEYS[i*6+1], KEYS[i*6+2], KEYS[i*6+3], KEYS[i*6+4]
  local keep, pace = KEYS[i*6+5], KEYS[i*6+6]
  local kind, n, span = ARGV[i*3+5], tonumber(ARGV[i*3+6]), tonumber(ARGV[i*3+7])
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', used, '-inf', now)
  else
    redis.call('ZREMRANGEBYSCORE', used, '-inf', now - span)
  end
  local before = nil
  -- A job enters and leaves 'waiters', 'seen' and 'keep' together: no line (the usual
  -- case, a limit not reached) is one EXISTS instead of six calls.
  if redis.call('EXISTS', waiters) == 1 then
    lined[i] = true
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
    before = '(' .. string.format('%.0f', place)
  end
  local holding = redis.call('ZCARD', used)
  local free = n - holding
  local keeping = 0
  if free > 0 and before then
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
    local ahead = 0
    if before then ahead = redis.call('ZCOUNT', waiters, '-inf', before) end
    local position = ahead - free
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
  if lined[i] then
    redis.call('ZREM', waiters, me)
    redis.call('ZREM', seen, me)
    redis.call('ZREM', keep, me)
  end
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


def _sha(script: str) -> bytes:
    return hashlib.sha1(script.encode()).hexdigest().encode()


_TAKE_SHA, _GIVE_BACK_SHA, _RENEW_SHA = _sha(_TAKE), _sha(_GIVE_BACK), _sha(_RENEW)
_SCRIPTS = (_TAKE, _GIVE_BACK, _RENEW)

#: Prefix of every key.
PREFIX = "reliable:limits:"

#: Limit sets whose plan is kept, at most (keys rendered from arguments make new ones).
MAX_PLANS = 4096

Command = tuple[Any, ...]


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


def _evalsha(sha: bytes, keys: Sequence[str]) -> Command:
    return (b"EVALSHA", sha, str(len(keys)).encode(), *(key.encode() for key in keys))


@dataclass(frozen=True)
class _Plan:
    """One limit set's script calls, rendered once: bytes, which redis-py sends as they
    are. Each call adds its own arguments (the job, its token)."""

    #: EVALSHA, the script, its keys; then the job's four, then ``shapes``.
    take: Command
    #: kind, n, span of each limit.
    shapes: Command
    #: EVALSHA, the script, used and avg of each concurrency limit (None: only rates,
    #: which hold nothing).
    give_back: Command | None
    #: EVALSHA, the script, used of each concurrency limit; the token, then ``spans``.
    renew: Command | None
    spans: Command

    @classmethod
    def of(cls, parts: Sequence[Part]) -> _Plan:
        keys = [name for part in parts for name in _names(part)]
        shapes = tuple(
            str(value).encode() for part in parts for value in (part.kind, part.n, part.span_ms)
        )
        held = [part for part in parts if part.kind == "c"]
        given = [name for part in held for name in _names(part)[::3]]  # used, avg
        return cls(
            take=_evalsha(_TAKE_SHA, keys),
            shapes=shapes,
            give_back=_evalsha(_GIVE_BACK_SHA, given) if held else None,
            renew=_evalsha(_RENEW_SHA, [_names(part)[0] for part in held]) if held else None,
            spans=tuple(str(part.span_ms).encode() for part in held),
        )


def _read(conn: Connection, count: int) -> list[Any]:
    """The next ``count`` answers; an error answer is returned as its exception.
    Whatever interrupts it (an error, a soft time limit's exception) drops the
    connection: an answer left unread would answer the next call."""
    try:
        answers: list[Any] = []
        for _ in range(count):
            try:
                answers.append(conn.read_response())
            except ResponseError as exc:
                answers.append(exc)
        return answers
    except BaseException:
        conn.disconnect()
        raise


def _send(conn: Connection, commands: Sequence[Command]) -> None:
    """Write ``commands`` (no health check: it would read an answer that is not its
    own while a give back's is unread). A failed write drops the connection."""
    try:
        packed: Any = conn.pack_commands(commands)  # bytes (types-redis says str)
        conn.send_packed_command(packed, check_health=False)
    except BaseException:
        conn.disconnect()
        raise


def _run(conn: Connection, commands: Sequence[Command]) -> list[Any]:
    """Send ``commands`` in one round trip and read their answers; a NOSCRIPT answer (a
    restarted or flushed Redis) loads the scripts and sends them all again, once (a
    give back or a renew that ran is harmless to run again; a take that answered
    NOSCRIPT did not run)."""
    _send(conn, commands)
    answers = _read(conn, len(commands))
    if any(isinstance(answer, NoScriptError) for answer in answers):
        loads = [(b"SCRIPT", b"LOAD", script) for script in _SCRIPTS]
        _send(conn, loads)
        for error in _read(conn, len(loads)):
            if isinstance(error, Exception):
                raise error
        _send(conn, commands)
        answers = _read(conn, len(commands))
    return answers


def _kept(conn: Connection) -> bool:
    return getattr(conn, "_sock", None) is not None  # redis-py's socket: connected


def _call(conn: Connection, commands: Sequence[Command]) -> list[Any]:
    """``_run`` with the client's retries of connection errors (none unless configured).

    A connection kept open between calls may have been closed by Redis meanwhile (a
    restart, its ``timeout``): the client's pool polls a connection before lending it
    (about 4 µs), this sends once more on a new connection when a kept one fails. The
    commands did not reach Redis then; and if they did, running them again with the
    same token holds nothing more (a give back or a renew is idempotent, and a take
    finds its own slot already held, as a take that failed would have left it)."""
    kept = _kept(conn)

    def attempt() -> list[Any]:
        return conn.retry.call_with_retry(
            lambda: _run(conn, commands), lambda _error: conn.disconnect()
        )

    try:
        return attempt()
    except RedisConnectionError:
        if not kept:
            raise
        return attempt()


class _Line:
    """A connection of this process's own, and what was sent on it whose answer is not
    read yet. A forked child starts afresh: the parent's socket and answers are the
    parent's."""

    __slots__ = ("_conn", "_pid", "_pool", "unread")

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._pid = -1
        self._conn: Connection | None = None
        #: Give backs sent and their task's name, their answers not read yet.
        self.unread: list[tuple[Command, str]] = []

    def get(self) -> Connection:
        conn = self._conn
        if conn is None or self._pid != os.getpid():
            # Not connected yet: it connects on its first command, inside the retries.
            conn = self._conn = self._pool.make_connection()
            self._pid = os.getpid()
            self.unread = []
        return conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.disconnect()
        self._conn = None
        self.unread = []


class RedisSlots:
    """Slots in one Redis, shared by every worker of every app that names it."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self._errors: tuple[type[Exception], ...] = (redis.RedisError, OSError)
        self.client = redis.Redis.from_url(
            url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        pool = self.client.connection_pool
        self._pool = pool
        #: The takes' connection (one thread at a time), and the give backs'.
        self._takes, self._gives = _Line(pool), _Line(pool)
        self._taking, self._giving = threading.Lock(), threading.Lock()
        self._plans: dict[tuple[Part, ...], _Plan] = {}
        exiting.register(self)

    def _unavailable(self, doing: str, exc: Exception) -> LimitsUnavailable:
        from kombu.utils.url import maybe_sanitize_url

        return LimitsUnavailable(
            f"limits: {doing} in Redis at {maybe_sanitize_url(self.url)} failed "
            f"({type(exc).__name__}: {exc}); is that Redis up? (reliable_limits_url, else "
            "the broker's)"
        )

    def _plan(self, parts: Sequence[Part]) -> _Plan:
        key = parts if isinstance(parts, tuple) else tuple(parts)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            plan = self._plans[key] = _Plan.of(key)
        return plan

    def _call(self, command: Command) -> Any:
        """One script call, one round trip; its error answer raised."""
        if self._taking.acquire(blocking=False):
            try:
                (answer,) = _call(self._takes.get(), (command,))
            finally:
                self._taking.release()
        else:  # another thread of this process is calling: not worth waiting for
            conn = self._pool.get_connection()
            try:
                (answer,) = _call(conn, (command,))
            finally:
                self._pool.release(conn)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def take(self, me: str, since_ms: int, token: str, parts: Sequence[Part]) -> Taken | Full:
        plan = self._plan(parts)
        try:
            answer = self._call((*plan.take, me, since_ms, token, tiebreak(me), *plan.shapes))
        except self._errors as exc:
            raise self._unavailable("taking a slot", exc) from exc
        if answer[0] == 1:
            return Taken(int(answer[1]))
        return Full(int(answer[1]), int(answer[2]) - 1, int(answer[3]))

    def give_back(self, token: str, at_ms: int, parts: Sequence[Part]) -> None:
        command = self._plan(parts).give_back
        if command is None:
            return
        try:
            self._call((*command, token, at_ms))
        except self._errors as exc:
            raise self._unavailable("giving a slot back", exc) from exc

    def give_back_soon(self, token: str, at_ms: int, parts: Sequence[Part], task_name: str) -> None:
        """Send the give back and return without its answer (read by the next one)."""
        command = self._plan(parts).give_back
        if command is None:
            return
        with self._giving:
            conn = self._gives.get()
            self._settle(conn)  # the answers before this one: they came long ago
            sent = (*command, token, at_ms), task_name
            try:
                _send(conn, (sent[0],))
            except self._errors:
                # Not written: sent again now, waiting for it (Redis is likely down).
                self._again(conn, [sent])
                return
            self._gives.unread.append(sent)

    def _settle(self, conn: Connection) -> None:
        """Read the answers of the give backs sent so far; send again those that failed
        or whose answer was lost with the connection."""
        unread, self._gives.unread = self._gives.unread, []
        if not unread:
            return
        try:
            answers = _read(conn, len(unread))
        except self._errors:
            self._again(conn, unread)
            return
        failed = [
            sent
            for sent, answer in zip(unread, answers, strict=True)
            if isinstance(answer, Exception)
        ]
        if failed:
            self._again(conn, failed)

    def _again(self, conn: Connection, sent: list[tuple[Command, str]]) -> None:
        """Send these give backs again and wait for their answers (a NOSCRIPT loads the
        scripts, a broken connection is replaced once); what still fails is logged."""
        names = [name for _, name in sent]
        try:
            answers = _call(conn, [command for command, _ in sent])
        except self._errors as exc:
            not_given_back(names, self._unavailable("giving a slot back", exc))
            return
        errors = [
            (name, a) for name, a in zip(names, answers, strict=True) if isinstance(a, Exception)
        ]
        if errors:  # an error answer (a Redis out of memory): those, and only those
            not_given_back(
                [name for name, _ in errors], self._unavailable("giving a slot back", errors[0][1])
            )

    def settle(self, timeout: float = 5.0) -> bool:
        """Read the answers to the give backs sent so far (waiting at most ``timeout``
        seconds for them), sending again those that failed; False if they did not come."""
        with self._giving:
            conn = self._gives.get()  # in a forked child: a new line, nothing unread
            if not self._gives.unread:
                return True
            try:
                if not conn.can_read(timeout=timeout):
                    return False
            except self._errors:
                pass  # the connection broke: _settle sends them again
            self._settle(conn)
            return True

    def renew(self, token: str, parts: Sequence[Part]) -> int:
        """Push the lease of this holder's concurrency slots; how many it still held."""
        plan = self._plan(parts)
        if plan.renew is None:
            return 0
        try:
            kept = self._call((*plan.renew, token, *plan.spans))
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
        """Read what is left to read (a few seconds at most), then close the connections."""
        self.settle(timeout=5.0)
        self._takes.close()
        self._gives.close()
        self.client.close()
