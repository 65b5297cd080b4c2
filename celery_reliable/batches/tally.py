"""Where members' endings wait to be counted: a list in the broker's Redis.

Counting each ending in its own store transaction costs a commit per member (on
PostgreSQL mostly the WAL's flush), which a member that does little cannot hide
(``docs/performance.md``, Batches). So on a Redis broker a member's ending is one
``RPUSH`` to this list, answered before the member's message is acked, and a thread
of every worker (``counter.py``) counts them in groups, one store transaction per
group (``store/batches.py``, ``BatchRows.members_ended``). The ending is then as
durable as the member's message itself: both live in the same Redis.

Taking endings loses none, whoever dies when:

* a counter moves a group from the list to a list of its own (``taking.<owner>``),
  in one script, and deletes that only once the group's transaction committed;
* each take stamps the owner's time in ``takers``; a counter whose stamp is older
  than :data:`STALE_AFTER` (a dead worker) has its list moved back by any other
  (:meth:`EndingsList.rescue`);
* counting is once per task id in the store, so a group counted twice (its counter
  stalled, its list was moved back, then it committed) counts nothing the second time.

The keys carry a hash of the store's URL: apps sharing a Redis database but not a
store never count each other's endings.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_reliable.store.batches import Ending

#: Seconds without a take after which a counter is taken for dead and its group moved
#: back to the list. Counters take at least every :data:`BLOCK` seconds while alive.
STALE_AFTER = 15.0
#: Seconds a counter blocks waiting for an ending when the list is empty.
BLOCK = 1.0
#: Endings counted in one store transaction, at most.
GROUP = 500
#: Seconds a counter waits for more endings once it has one, before it takes them: a
#: group of one costs a store transaction and three round trips to Redis (each about
#: 0.3 ms on a 2-vCPU VM), in the worker's main process, which also feeds the pool. A
#: batch's callbacks may fire this much later.
LINGER = 0.05

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[3], now, ARGV[2])
local room = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[2])
if room > 0 then
  local items = redis.call('LRANGE', KEYS[1], 0, room - 1)
  if #items > 0 then
    redis.call('LTRIM', KEYS[1], #items, -1)
    redis.call('RPUSH', KEYS[2], unpack(items))
  end
end
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

# KEYS: the list, takers; ARGV: stale ms, the prefix of a taker's list, a taker to
# move back whatever its age ('' for none). Returns how many endings moved back.
_RESCUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[1]))
if ARGV[3] ~= '' then gone[#gone + 1] = ARGV[3] end
local moved = 0
for _, owner in ipairs(gone) do
  local key = ARGV[2] .. owner
  local items = redis.call('LRANGE', key, 0, -1)
  for i = 1, #items, 1000 do
    redis.call('RPUSH', KEYS[1], unpack(items, i, math.min(i + 999, #items)))
  end
  moved = moved + #items
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[2], owner)
end
return moved
"""


def list_key(store_url: Any) -> str:
    """The list's key for the store at ``store_url`` (its engine's URL; credentials
    left out of the hash, so that a changed password keeps the list)."""
    from sqlalchemy.engine import make_url

    # _replace, not set(): set() keeps a password given None.
    plain = make_url(store_url)._replace(password=None).render_as_string(hide_password=False)
    digest = hashlib.sha1(plain.encode(), usedforsecurity=False).hexdigest()[:12]
    return f"celery_reliable.batch_endings.{digest}"


def encode(batch_id: str, task_id: str, task_name: str, outcome: str, at: datetime) -> str:
    return json.dumps([batch_id, task_id, task_name, outcome, at.isoformat()])


def decode(raw: bytes | str) -> Ending | None:
    """An ending as pushed; None for anything else (logged by the caller, dropped)."""
    from celery_reliable.store.batches import ENDINGS, Ending

    try:
        batch_id, task_id, task_name, outcome, at = json.loads(raw)
        when = datetime.fromisoformat(at)
    except (ValueError, TypeError):
        return None
    if outcome not in ENDINGS or not all(isinstance(v, str) for v in (batch_id, task_id)):
        return None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    return Ending(batch_id, task_id, str(task_name), outcome, when)


class EndingsList:
    """The list of one store's endings in one Redis, as a process uses it: a pool
    child pushes, a worker's counter takes (each process its own connections: a forked
    child starts afresh)."""

    def __init__(self, redis_url: str, store_url: Any) -> None:
        self.redis_url = redis_url
        self.key = list_key(store_url)
        self.takers = f"{self.key}.takers"
        self._prefix = f"{self.key}.taking."
        # A redis.Redis: Any, as redis-py's scripting calls are untyped.
        self._client: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    def client(self) -> Any:
        client = self._client
        if client is None or self._pid != os.getpid():
            import redis as redis_lib

            with self._lock:
                client = self._client = redis_lib.Redis.from_url(
                    self.redis_url,
                    socket_timeout=BLOCK + 5,
                    socket_connect_timeout=5,
                    health_check_interval=30,
                )
                self._pid = os.getpid()
        return client

    def push(self, ending: str) -> None:
        """One ending, answered by Redis before this returns (the member's ack
        follows)."""
        self.client().rpush(self.key, ending)

    def new_owner(self) -> str:
        return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"

    def take(self, owner: str, block: float = BLOCK, linger: float = 0.0) -> list[bytes]:
        """The owner's group: what it holds already (a group whose count failed), with
        up to :data:`GROUP` more; waits up to ``block`` seconds when there is none, and
        ``linger`` seconds for more once there is one."""
        client = self.client()
        keys = (self.key, self._prefix + owner, self.takers)
        held: list[bytes] = client.eval(_TAKE, 3, *keys, GROUP, owner)
        if not held:
            if block <= 0:
                return held
            # Nothing waiting: block until one ending comes, then take the rest with it.
            taking = self._prefix + owner
            if client.brpoplpush(self.key, taking, timeout=max(1, round(block))) is None:
                return []
        if linger > 0 and len(held) < GROUP:
            time.sleep(linger)
            held = client.eval(_TAKE, 3, *keys, GROUP, owner)
        elif not held:
            held = client.eval(_TAKE, 3, *keys, GROUP, owner)
        return held

    def counted(self, owner: str) -> None:
        """The owner's group is counted (its transaction committed)."""
        self.client().delete(self._prefix + owner)

    def rescue(self, release: str = "") -> int:
        """Move back the groups of counters silent for :data:`STALE_AFTER` (dead), and
        ``release``'s (a counter stopping); how many endings moved."""
        moved: Any = self.client().eval(
            _RESCUE, 2, self.key, self.takers, int(STALE_AFTER * 1000), self._prefix, release
        )
        return int(moved)

    def dead_here(self) -> list[str]:
        """Counters of this host whose process is gone (a worker killed and started
        again): their groups need not wait :data:`STALE_AFTER` to be moved back. A pid
        alive in another process namespace under the same host name only costs a group
        counted twice, which counts nothing twice."""
        here = socket.gethostname()
        dead = []
        for raw in self.client().zrange(self.takers, 0, -1):
            owner = raw.decode() if isinstance(raw, bytes) else str(raw)
            host, _, rest = owner.rpartition(".")[0].rpartition(".")
            if host != here or not rest.isdigit() or int(rest) == os.getpid():
                continue
            try:
                os.kill(int(rest), 0)
            except ProcessLookupError:
                dead.append(owner)
            except OSError:
                continue  # alive, another user's
        return dead

    def waiting(self) -> int:
        """Endings not taken by any counter yet."""
        return int(self.client().llen(self.key))


_LIST_ATTR = "_reliable_batch_endings_list"


def endings_list_for(app: Any) -> EndingsList | None:
    """The app's list of endings, or None when its endings are each counted in the
    store directly: ``reliable_batch_group_endings`` off, no store, or a broker that
    is not a plain Redis (RabbitMQ, Sentinel). Kept with the app's store in this
    process (forgotten with it: ``testing.reset``)."""
    from celery_reliable.store import store_for

    store = store_for(app)
    if store is None:
        return None
    found = store.__dict__.get(_LIST_ATTR, False)
    if found is not False:
        return found  # type: ignore[no-any-return]
    from celery_reliable.config import settings_for

    broker = str(app.conf.broker_write_url or app.conf.broker_url or "").split(";", 1)[0]
    endings: EndingsList | None = None
    if settings_for(app).batch_group_endings and broker.split("://", 1)[0] in (
        "redis",
        "rediss",
        "unix",
    ):
        endings = EndingsList(broker, store.engine.url)
    setattr(store, _LIST_ATTR, endings)
    return endings
