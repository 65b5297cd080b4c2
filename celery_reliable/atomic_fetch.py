"""Atomic fetch for Redis brokers: a message is never only in a worker's memory.

kombu's Redis transport takes a message with ``BRPOP`` and then, in a second command,
records it in the ``unacked`` hash and ``unacked_index`` sorted set. A worker that dies
between the two (SIGKILL, OOM, a lost host), or a Redis restart between them, loses the
message: it is on no queue and in no hash, so neither kombu's restore nor our rescue
(:mod:`celery_reliable.redelivery`) can see it. The chaos suite lost about one job per
kill that landed while the workers were fetching without pause.

Here the pop and the record are one Lua script, so Redis holds the message in the
queue or in the ``unacked`` hash at every instant. kombu's own QoS then finds the entry
already written and skips its second round trip.

Redis scripts cannot block, so an idle worker waits with ``BLMOVE key key RIGHT
RIGHT``: moving a list's last element onto its own tail changes nothing, but blocks
until the list has one (Redis ≥ 6.2). It watches one queue's unprioritised key at a
time, in turn, for at most kombu's ``brpop_timeout`` (1 s), and fetches after every
wake-up or timeout: a message published to that key is taken at once, one on another
key (another queue, or a ``priority``) within ``brpop_timeout`` on an idle worker. A
busy worker never waits: the script finds the next message at once.

Consumers with ``no_ack`` (Celery's mingle and control replies) are fetched as kombu
does, without a record, since nobody would ever ack it. The worker bootstep installs
this transport on ``redis://``, ``rediss://`` and ``sentinel://`` brokers unless
``reliable_atomic_fetch = False`` (:func:`install`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from time import monotonic, time
from typing import Any

from celery import Celery
from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from celery_reliable.config import ReliableSettings

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

#: The oldest Redis with BLMOVE, which the idle wait needs.
MINIMUM_REDIS = (6, 2)

#: ``broker_transport`` names the worker bootstep sets (registered with kombu below).
TRANSPORT_NAMES = {
    "redis": "reliable-redis",
    "rediss": "reliable-redis",
    "sentinel": "reliable-sentinel",
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

    Overrides the two methods kombu's poller calls, ``_brpop_start`` (send) and
    ``_brpop_read`` (the socket is readable), identical from kombu 5.3 to 5.7.
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
    _queue_cycle: Any
    _in_poll: Any
    _q_for_pri: Any
    _tag_to_queue: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Delivery tags the script recorded, until kombu's QoS.append sees them.
        self._recorded_tags: set[str] = set()
        #: Queues consumed with no_ack: popped without a record.
        self._unrecorded_queues: set[str] = set()
        #: None until the first fetch asks Redis (version, script loaded).
        self._atomic: bool | None = None
        self._idle = False
        self._wait_turn = 0
        self._pending_replies = 0
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

    # -- the fetch ----------------------------------------------------------------

    def _atomic_enabled(self) -> bool:
        if self._atomic is None:
            self._atomic = self._probe()
        return self._atomic

    def _probe(self) -> bool:
        # Once per channel, before its first fetch, while nothing is in flight on the
        # connection kombu keeps for fetching.
        if not self.ack_emulation:
            return False  # no unacked hash at all: nothing to record into
        version = redis_version(str(self.client.info("server").get("redis_version", "0")))
        if version < MINIMUM_REDIS:
            logger.warning(
                "celery_reliable: Redis %s has no BLMOVE (6.2+), so this worker fetches "
                "with kombu's BRPOP: a worker killed while fetching can lose that message",
                ".".join(map(str, version)),
            )
            return False
        self._load_script()
        return True

    def _load_script(self) -> None:
        import redis

        # Unprefixed: SCRIPT takes no key.
        redis.Redis.execute_command(self.client, "SCRIPT", "LOAD", FETCH_SCRIPT)

    def _key(self, name: str) -> str:
        prefix = self.global_keyprefix
        return prefix + name if prefix else name

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
        commands: list[tuple[Any, ...]] = []
        if self._idle:
            # Nothing was there last time: wait for one queue (in turn) to have a
            # message, then fetch from all of them. BLMOVE k k RIGHT RIGHT moves nothing.
            watch = keys[self._wait_turn % len(queues)]
            self._wait_turn += 1
            commands.append(("BLMOVE", watch, watch, "RIGHT", "RIGHT", timeout or 0))
        fetch_keys = [self._key(self.unacked_key), self._key(self.unacked_index_key), *keys]
        # The delivery time is taken here, up to one wait before the script runs: an
        # entry is at most brpop_timeout older than kombu's own would be.
        commands.append(("EVALSHA", FETCH_SHA, len(fetch_keys), *fetch_keys, repr(time()), *flags))
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # kombu 5.7's health check reads it
        self._pending_replies = len(commands)
        connection.send_packed_command(connection.pack_commands(commands))

    def _brpop_read(self, **options: Any) -> bool:
        if not self._atomic:
            result: bool = super()._brpop_read(**options)  # type: ignore[misc]
            return result
        from redis.exceptions import NoScriptError, ResponseError

        try:
            connection = self.client.connection
            reply: Any = None
            error: Exception | None = None
            pending, self._pending_replies = self._pending_replies, 0
            for _ in range(pending):
                # Every reply is read, even after an error, or the next would be
                # taken for this one's.
                try:
                    reply = self.client.parse_response(connection, "EVALSHA", **options)
                except self.connection_errors:  # type: ignore[attr-defined]
                    connection.disconnect()
                    raise
                except ResponseError as exc:
                    error, reply = exc, None
            if isinstance(error, NoScriptError):
                self._load_script()  # Redis restarted: its script cache is empty
                self._idle = False
                raise virtual.Empty()
            if error is not None:
                raise error
            if not reply:
                self._idle = True
                raise virtual.Empty()
            self._idle = False
            return self._deliver_fetched(reply)
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:  # kombu 5.7: the connection is idle now
                flush()

    def _deliver_fetched(self, reply: Any) -> bool:
        key, payload, recorded = reply
        key = bytes_to_str(key)
        prefix = self.global_keyprefix
        if prefix and key.startswith(prefix):
            key = key[len(prefix) :]
        queue = key.rsplit(self.sep, 1)[0]
        self._queue_cycle.rotate(queue)
        message = loads(bytes_to_str(payload))
        tag = message["properties"]["delivery_tag"] if recorded else None
        if tag is not None:
            self._recorded_tags.add(tag)
        try:
            self.connection._deliver(message, queue)
        finally:
            if tag is not None:
                # Delivered without QoS.append (no consumer left for the queue): the
                # entry stays in Redis and the rescue brings the message back.
                self._recorded_tags.discard(tag)
        return True


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


# New names only: kombu's own "redis" and "sentinel" are left as they are, for every
# other connection in the process.
TRANSPORT_ALIASES.setdefault("reliable-redis", f"{__name__}:Transport")
TRANSPORT_ALIASES.setdefault("reliable-sentinel", f"{__name__}:SentinelTransport")


def _schemes(app: Celery) -> set[str]:
    schemes = set()
    for setting in ("broker_url", "broker_read_url", "broker_write_url"):
        url = app.conf.get(setting)
        urls = url if isinstance(url, (list, tuple)) else [url] if url else []
        for one in urls:
            for part in str(one).split(";"):
                schemes.add(part.split("://", 1)[0].lower() if "://" in part else part.lower())
    return schemes


def install(app: Celery, settings: ReliableSettings) -> str | None:
    """In a worker, before its consumer connects: fetch atomically from Redis.

    Sets ``broker_transport`` to ``reliable-redis`` (or ``reliable-sentinel``) when
    every broker URL of the app is ``redis://``, ``rediss://`` or ``sentinel://`` and
    ``broker_transport`` names no other transport. Returns the name set, or None.
    """
    if not settings.atomic_fetch:
        return None
    schemes = _schemes(app)
    names = {TRANSPORT_NAMES.get(scheme) for scheme in schemes}
    if len(names) != 1 or None in names:
        return None  # not Redis, a mix, or kombu's redis+socket:// form
    name = names.pop()
    assert name is not None
    current = app.conf.broker_transport
    if current not in (None, "", name, *schemes):
        logger.warning(
            "celery_reliable: broker_transport is %r, so this worker fetches with it and "
            "not atomically (set reliable_atomic_fetch = False to silence this)",
            current,
        )
        return None
    app.conf.broker_transport = name
    return name
