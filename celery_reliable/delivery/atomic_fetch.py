"""Atomic fetch for Redis brokers: a message is never only in a worker's memory.

kombu's Redis transport takes a message with ``BRPOP`` and then, in a second command,
records it in the ``unacked`` hash and ``unacked_index`` sorted set. A worker that dies
between the two (SIGKILL, OOM, a lost host), or a Redis restart between them, loses the
message: it is on no queue and in no hash, so neither kombu's restore nor our rescue
(:mod:`celery_reliable.delivery.redelivery`) can see it. The chaos suite lost about one job per
kill that landed while the workers were fetching without pause.

Here the pop and the record are one Lua script, so Redis holds the message in the
queue or in the ``unacked`` hash at every instant. kombu's own QoS then finds the entry
already written and skips its second round trip.

Redis scripts cannot block, so an idle worker waits with ``BLMOVE key key RIGHT
RIGHT``: moving a list's last element onto its own tail changes nothing, but blocks
until the list has one (Redis ≥ 6.2). It watches the key most of its messages came
from (a queue's, at the priority they are sent with) for at most a second, and fetches
from every key after each wake-up or timeout: a message on another key (another
queue, another priority) is taken within a second on an idle worker. A busy worker
never waits: the script finds the next message at once.

Consumers with ``no_ack`` (Celery's mingle and control replies) are fetched as kombu
does, without a record, since nobody would ever ack it. In a worker, :func:`install`
points kombu's ``redis``, ``rediss`` and ``sentinel`` transport names at the classes
here (``reliable_atomic_fetch``); anything Redis refuses to do for it (an old server,
an ACL without ``INFO`` or scripting) leaves that channel on kombu's ``BRPOP``, with a
warning.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from time import monotonic, time
from typing import Any

from celery import Celery
from kombu import transport as kombu_transport
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from celery_reliable.config import ReliableSettings
from celery_reliable.delivery.broker import uses_redis

logger = logging.getLogger("celery_reliable.atomic_fetch")

#: KEYS: the unacked hash, the unacked index, then the queue keys in kombu's order
#: (priority by priority, queue by queue). ARGV: the delivery time, then per queue
#: key "1" to record what it pops there, "0" not to (a no_ack consumer's queue).
#: The entry is built as kombu's QoS.append builds it: [payload, exchange, routing_key]
#: with the payload spliced in verbatim (re-encoding would turn ``[]`` into ``{}``).
FETCH_SCRIPT = """
for i = 3, #KEYS do
  local payload = redis.call('RPOP', KEYS[i])
  if payload then
    if ARGV[i - 1] == '1' then
      local ok, message = pcall(cjson.decode, payload)
      if ok and type(message) == 'table' and type(message['properties']) == 'table' then
        local properties = message['properties']
        local tag = properties['delivery_tag']
        local info = properties['delivery_info']
        if type(tag) == 'string' and type(info) == 'table' then
          redis.call('ZADD', KEYS[2], ARGV[1], tag)
          redis.call('HSET', KEYS[1], tag, '[' .. payload .. ',' ..
            cjson.encode(info['exchange']) .. ',' .. cjson.encode(info['routing_key']) .. ']')
          return {KEYS[i], payload, 1}
        end
      end
    end
    return {KEYS[i], payload, 0}
  end
end
return false
"""
FETCH_SHA = hashlib.sha1(FETCH_SCRIPT.encode()).hexdigest()

#: A reply read long after it was sent (kombu held it while the worker had no credit):
#: still ours only if no rescue has taken the entry back; then its time is renewed.
CONFIRM_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[2], ARGV[1])
  return 1
end
return 0
"""

#: The oldest Redis with BLMOVE, which the idle wait needs.
MINIMUM_REDIS = (6, 2)
#: Longest idle wait on one key: a message on another key waits at most this.
WAIT_SECONDS = 1.0
#: A reply read this much later than its wait could last was held back by kombu.
LATE_SECONDS = 2.0
#: After a failed BLMOVE (Redis out of memory refuses it), idle waits sleep on a key
#: that never exists, for this long, instead of spinning.
WAIT_FALLBACK_SECONDS = 60.0
#: Where a payload that cannot be decoded goes (with the global key prefix).
UNREADABLE_KEY = "celery_reliable:unreadable"

#: The classes kombu's names resolve to in a worker with the atomic fetch.
ALIASES = {
    "redis": f"{__name__}:Transport",
    "rediss": f"{__name__}:Transport",
    "sentinel": f"{__name__}:SentinelTransport",
}
#: Names that always mean the atomic fetch (``broker_transport``, benchmarks).
EXTRA_ALIASES = {
    "reliable-redis": f"{__name__}:Transport",
    "reliable-sentinel": f"{__name__}:SentinelTransport",
}


def redis_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` → ``(7, 0, 15)``; what cannot be read counts as 0."""
    parts = []
    for part in text.split(".")[:3]:
        match = re.match(r"\d+", part)  # "7-rc1" is 7
        parts.append(int(match.group()) if match else 0)
    return tuple(parts)


class AtomicFetchQoS(kombu_redis.QoS):
    """kombu's QoS, minus the write the fetch script has already made."""

    channel: Any

    def append(self, message: Any, delivery_tag: str) -> None:
        recorded = self.channel._recorded_tags
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class AtomicFetchMixin:
    """Replaces the channel's ``BRPOP`` with the fetch script (see the module).

    Overrides what kombu's poller calls: ``_brpop_start`` (send), ``_brpop_read`` (the
    socket is readable) and ``_poll_error``, the same from kombu 5.3 to 5.7.
    """

    QoS: Any = AtomicFetchQoS

    # Set by kombu's Channel; declared for the type checker.
    client: Any
    connection: Any
    sep: str
    priority_steps: list[int]
    active_queues: Any
    ack_emulation: bool
    global_keyprefix: str
    unacked_key: str
    unacked_index_key: str
    connection_errors: tuple[type[BaseException], ...]
    _queue_cycle: Any
    _in_poll: Any
    _q_for_pri: Any
    _tag_to_queue: dict[str, str]
    _brpop_sent_at: float | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Delivery tags the script recorded, until kombu's QoS.append sees them.
        self._recorded_tags: set[str] = set()
        #: Queues consumed with no_ack: popped without a record.
        self._unrecorded_queues: set[str] = set()
        #: None until the first fetch asks Redis (version, script loaded).
        self._atomic: bool | None = None
        self._idle = False
        #: Replies owed for the commands of the last _brpop_start: ("wait", "fetch").
        self._pending: tuple[str, ...] = ()
        #: Keys messages came from: the idle wait watches the busiest.
        self._arrivals: Counter[str] = Counter()
        self._wait_fallback_until = 0.0
        super().__init__(*args, **kwargs)

    # -- consumers ----------------------------------------------------------------

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._unrecorded_queues.add(queue)
        else:
            self._unrecorded_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)  # type: ignore[misc]

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)  # type: ignore[misc]
        if queue is not None and queue not in self._tag_to_queue.values():
            self._unrecorded_queues.discard(queue)
        return result

    # -- talking to Redis on the fetch connection ------------------------------------

    def _call(self, *args: Any) -> Any:
        """One command on the connection kombu's poller watches, without redis-py's
        retry (a retry would reconnect a socket the poller does not know about)."""
        connection = self.client.connection
        try:
            connection.send_command(*args)
            return self.client.parse_response(connection, str(args[0]))
        except self.connection_errors:
            connection.disconnect()
            raise

    def _atomic_enabled(self) -> bool:
        if self._atomic is None:
            self._atomic = self._probe()
        return self._atomic

    def _probe(self) -> bool:
        # Once per channel, before its first fetch, while nothing is in flight.
        from redis.exceptions import ResponseError

        if not self.ack_emulation:
            return False  # no unacked hash at all: nothing to record into
        try:
            info = self._call("INFO", "server")
            version = redis_version(str(info.get("redis_version", "0")))
            if version < MINIMUM_REDIS:
                logger.warning(
                    "celery_reliable: Redis %s has no BLMOVE (6.2+), so this worker "
                    "fetches with kombu's BRPOP: a worker killed while fetching can lose "
                    "that message",
                    ".".join(map(str, version)),
                )
                return False
            self._call("SCRIPT", "LOAD", FETCH_SCRIPT)
        except ResponseError as exc:
            logger.warning(
                "celery_reliable: Redis refused what the atomic fetch needs (%s), so "
                "this worker fetches with kombu's BRPOP: allow INFO, SCRIPT, EVALSHA and "
                "BLMOVE to the worker's Redis user, or set reliable_atomic_fetch = False",
                exc,
            )
            return False
        return True

    def _key(self, name: str) -> str:
        prefix = self.global_keyprefix
        return prefix + name if prefix else name

    # -- the fetch ----------------------------------------------------------------

    def _brpop_start(self, timeout: float | None = None) -> None:
        if not self._atomic_enabled():
            super()._brpop_start(*(() if timeout is None else (timeout,)))  # type: ignore[misc]
            return
        if timeout is None:
            timeout = getattr(self, "brpop_timeout", 1)
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        keys: list[str] = []
        flags: list[str] = []
        unrecorded = self._unrecorded_queues
        for pri in self.priority_steps:
            for queue in queues:
                keys.append(self._key(self._q_for_pri(queue, pri)))
                flags.append("0" if queue in unrecorded else "1")
        # At most a second, whatever brpop_timeout (0 would block on one key forever).
        wait = min(timeout, WAIT_SECONDS) if timeout and timeout > 0 else WAIT_SECONDS
        commands: list[tuple[Any, ...]] = []
        pending: list[str] = []
        if self._idle:
            # Nothing was there last time: wait for a message, then fetch from every key.
            if monotonic() < self._wait_fallback_until:
                commands.append(("BLPOP", self._key(UNREADABLE_KEY + ":never"), wait))
            else:
                watch = self._watched(keys)
                # BLMOVE k k RIGHT RIGHT moves nothing: it only returns once k has one.
                commands.append(("BLMOVE", watch, watch, "RIGHT", "RIGHT", wait))
            pending.append("wait")
        fetch_keys = [self._key(self.unacked_key), self._key(self.unacked_index_key), *keys]
        # The delivery time is taken here, up to one wait before the script runs: an
        # entry is at most a second older than kombu's own would be.
        commands.append(("EVALSHA", FETCH_SHA, len(fetch_keys), *fetch_keys, repr(time()), *flags))
        pending.append("fetch")
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # kombu 5.7's health check reads it
        self._pending = tuple(pending)
        connection.send_packed_command(connection.pack_commands(commands))

    def _watched(self, keys: list[str]) -> str:
        """The key most messages came from; the first one until any came."""
        for key, _ in self._arrivals.most_common():
            if key in keys:
                return key
        return keys[0]

    def _brpop_read(self, **options: Any) -> bool:
        if not self._atomic:
            result: bool = super()._brpop_read(**options)  # type: ignore[misc]
            return result
        from redis.exceptions import NoScriptError, ResponseError

        connection = self.client.connection
        pending, self._pending = self._pending, ()
        try:
            if not pending:
                # Readable with nothing asked: the server closed the connection (kombu
                # reads the EOF as a ConnectionError and reconnects), or sent what
                # nobody expects; either way the connection is not to be trusted.
                from redis.exceptions import ConnectionError as RedisConnectionError

                connection.disconnect()
                raise RedisConnectionError("readable with no command pending: reconnecting")
            fetched: Any = None
            failures: dict[str, Exception] = {}
            for what in pending:
                # Every reply is read, even after an error, or the next would be taken
                # for this one's.
                try:
                    reply = self.client.parse_response(connection, "EVALSHA", **options)
                except ResponseError as exc:
                    failures[what] = exc
                    continue
                if what == "fetch":
                    fetched = reply
        except BaseException:
            if connection is not None and pending:
                connection.disconnect()  # a reply may be left unread: start afresh
            raise
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:  # kombu 5.7: the connection is idle now
                flush()
        wait_failure = failures.get("wait")
        if wait_failure is not None:
            self._wait_fallback_until = monotonic() + WAIT_FALLBACK_SECONDS
            logger.warning(
                "celery_reliable: Redis refused the idle wait (%s); for %gs this worker "
                "polls its queues every second instead",
                wait_failure,
                WAIT_FALLBACK_SECONDS,
            )
        fetch_failure = failures.get("fetch")
        if isinstance(fetch_failure, NoScriptError):
            self._call("SCRIPT", "LOAD", FETCH_SCRIPT)  # Redis restarted: no scripts
            self._idle = False
            raise virtual.Empty()
        if fetch_failure is not None:
            raise fetch_failure
        if not fetched:
            self._idle = True
            raise virtual.Empty()
        self._idle = False
        return self._deliver_fetched(fetched)

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == "BRPOP" and self._atomic:
            # kombu reads one reply; ours may owe two.
            try:
                return self._brpop_read(**options)
            except virtual.Empty:
                return None
        return super()._poll_error(type, **options)  # type: ignore[misc]

    def _deliver_fetched(self, reply: Any) -> bool:
        key, payload, recorded = reply
        key = bytes_to_str(key)
        self._arrivals[key] += 1
        if self._arrivals[key] > 1_000_000:  # recent arrivals weigh more
            self._arrivals = Counter({k: n // 2 for k, n in self._arrivals.items()})
        prefix = self.global_keyprefix
        bare = key[len(prefix) :] if prefix and key.startswith(prefix) else key
        queue = bare.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        try:
            message = loads(bytes_to_str(payload))
            tag = message["properties"]["delivery_tag"] if recorded else None
        except Exception as exc:  # a payload Lua's cjson read and Python cannot
            self._set_aside(payload, recorded, exc)
            raise virtual.Empty() from None
        if tag is not None:
            sent_at = self._brpop_sent_at
            if sent_at is not None and monotonic() - sent_at > WAIT_SECONDS + LATE_SECONDS:
                # kombu held this reply while the worker had no credit (an ETA came
                # due, a rate limit): a rescue may have put the message back on its
                # queue meanwhile, and it is not ours any more.
                confirmed = self._call(
                    "EVAL", CONFIRM_SCRIPT, 2, self._key(self.unacked_key),
                    self._key(self.unacked_index_key), tag, repr(time()),
                )  # fmt: skip
                if not confirmed:
                    logger.info(
                        "celery_reliable: message %s was fetched while the worker had no "
                        "credit and rescued before it was read; left to its new delivery",
                        tag,
                    )
                    raise virtual.Empty()
            self._recorded_tags.add(tag)
        try:
            self.connection._deliver(message, queue)
        finally:
            if tag is not None:
                # Delivered without QoS.append (no consumer left for the queue): the
                # entry stays in Redis and the rescue brings the message back.
                self._recorded_tags.discard(tag)
        return True

    def _set_aside(self, payload: Any, recorded: Any, exc: Exception) -> None:
        """Keep a payload nobody can decode where it is seen, not in the unacked hash
        (from where every worker would take it, and fail, again)."""
        tag = None
        raw = payload if isinstance(payload, bytes) else str(payload).encode()
        if recorded:
            match = re.search(rb'"delivery_tag"\s*:\s*"([^"]+)"', raw)
            tag = match.group(1).decode(errors="replace") if match else None
        commands: list[tuple[Any, ...]] = [("LPUSH", self._key(UNREADABLE_KEY), raw)]
        if tag is not None:
            commands += [
                ("HDEL", self._key(self.unacked_key), tag),
                ("ZREM", self._key(self.unacked_index_key), tag),
            ]
        for command in commands:
            self._call(*command)
        logger.error(
            "celery_reliable: a message on Redis cannot be decoded (%s); it is kept in "
            "the list %r for you to read, not delivered",
            exc,
            self._key(UNREADABLE_KEY),
        )


class AtomicFetchChannel(AtomicFetchMixin, kombu_redis.Channel):
    """kombu's Redis channel with the atomic fetch."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport (``redis://``, ``rediss://``) with the atomic fetch."""

    Channel = AtomicFetchChannel


class AtomicFetchSentinelChannel(AtomicFetchMixin, kombu_redis.SentinelChannel):
    """kombu's Sentinel channel with the atomic fetch."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Sentinel transport (``sentinel://``) with the atomic fetch."""

    Channel = AtomicFetchSentinelChannel


for _name, _target in EXTRA_ALIASES.items():
    TRANSPORT_ALIASES.setdefault(_name, _target)

#: kombu's own targets for the names :func:`install` repoints, to put back.
_KOMBU_ALIASES = {name: TRANSPORT_ALIASES.get(name) for name in ALIASES}


def _forget(name: str) -> None:
    """Drop kombu's cached class for ``name``: the next connection resolves it again."""
    cache: dict[Any, Any] = vars(kombu_transport).get("_transport_cache", {})
    cache.pop(name, None)


def install(app: Celery, settings: ReliableSettings) -> bool:
    """In a worker, before its consumer connects: fetch atomically from Redis.

    Points kombu's ``redis``, ``rediss`` and ``sentinel`` names at the classes above,
    for every connection this process makes from now on (its producers publish
    exactly as kombu's do), so URLs, TLS (``rediss://``) and failover between broker
    URLs work unchanged. Returns whether it did; not when a broker URL names none of
    them, the setting is off, or ``broker_transport`` names another transport.
    """
    if not settings.atomic_fetch or not uses_redis(app):
        return False
    chosen = app.conf.broker_transport
    if chosen not in (None, "", *ALIASES, *EXTRA_ALIASES):
        logger.warning(
            "celery_reliable: broker_transport is %r, so this worker fetches with it and "
            "not atomically (set reliable_atomic_fetch = False to silence this)",
            chosen,
        )
        return False
    for name, target in ALIASES.items():
        TRANSPORT_ALIASES[name] = target
        _forget(name)
    return True


def uninstall() -> None:
    """Give kombu's names back their own classes (tests, embedded workers)."""
    for name, target in _KOMBU_ALIASES.items():
        if target is None:
            TRANSPORT_ALIASES.pop(name, None)
        else:
            TRANSPORT_ALIASES[name] = target
        _forget(name)


def installed() -> bool:
    """Whether kombu's ``redis`` name resolves to the atomic fetch in this process."""
    return TRANSPORT_ALIASES.get("redis") == ALIASES["redis"]
