"""Reliable fetch: a message taken from the task queue is always somewhere in Redis.

kombu's Redis transport takes a message with BRPOP and records it in its `unacked` hash in a
second round trip. A worker killed between the two loses the message; one killed after leaves
it there until the visibility timeout (300 s here) runs out. Neither depends on who published
the message, so the fix belongs to the consumer, not to the publisher.

Here the queue is consumed with BLMOVE into a list of the consumer's own (its *held* list), so
taking a message and recording who holds it are one step in Redis, and the ack removes it
from that list. Each consumer (one per channel) keeps a deadline in a registry per queue,
renewed every quarter of its heartbeat TTL by a thread; when a deadline passes, any live
consumer moves that consumer's held messages back to the front of the queue (the reliable
queue pattern, as Sidekiq Pro's super_fetch does). kombu keeps its in-process bookkeeping
(prefetch, restore at shutdown), but these messages never enter its `unacked` hash, so its
visibility-timeout restore cannot deliver them a second time.

Only a channel that consumes exactly one queue with acks fetches this way; anything else
(Celery's reply queues, several queues) is kombu's own BRPOP. Messages go back byte for byte:
kombu would mark them `redelivered`, which needs a decode and re-encode, and nothing here
reads the flag. Messages published with a priority (kombu keeps them in lists of their own)
are taken when the main list has been empty for one BLMOVE timeout, and go back to the main
list. Needs Redis 6.2 or later (BLMOVE, LMOVE).

Keys, each behind kombu's `global_keyprefix`, `<prefix>` being the `fetch_key_prefix` option:
`<prefix>:<queue>:consumers`, a sorted set of consumer ids by deadline (ms, Redis's clock, so
hosts' clocks never matter), `<prefix>:<queue>:held:<consumer id>`, a list per consumer, and
`<prefix>:<queue>:crashes`, how often each message was in the hands of a consumer that died or
of a process that was lost (a prefork child killed while running it).

A message that keeps killing whoever takes it would come back for ever. So each time one is put
back because of a failure, that is counted, and at `fetch_max_crashes` it goes back wrapped as
`{"quarantined": {"crashes": n}, "item": <the message>}`, which `poison.tolerant_loads` turns
into a dead letter without decoding what is inside. Everything a dying consumer held counts a
crash, the message that killed it and those beside it alike; only the one that keeps killing
comes back often enough to reach the limit, unless the same messages keep being taken together.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections import Counter
from queue import Empty
from typing import Any

import redis
from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from tagging_worker.worker.broker_teardown import torn_down

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_TTL = 20.0
"""Seconds a consumer may go without renewing its deadline before it counts as dead."""
DEFAULT_MAX_CRASHES = 3
"""A message whose consumer failed it this many times is quarantined, not delivered again."""
CRASH_COUNTS_TTL = 86_400.0
"""Seconds a message's failures are remembered after the last one."""
QUARANTINED = "quarantined"
"""The key that marks a quarantine wrapper: `{"quarantined": {"crashes": n}, "item": raw}`."""
OPTIONS = ("fetch_key_prefix", "fetch_heartbeat_ttl", "fetch_max_crashes")
"""Transport options this module reads (besides kombu's own)."""

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: registry; ARGV: consumer, ttl_ms
_BEAT = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now_ms() + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

# KEYS: registry; ARGV: batch
# Read only: which consumers are past their deadline.
_EXPIRED = (
    _NOW
    + """
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[1]))
"""
)

# Puts one message back at the consuming end, counting that a consumer failed it (its holder
# died, or a worker lost the process running it). The count lives in a hash by the message's
# SHA-1 that expires a while after the last failure; the failure that reaches the limit puts
# the message back as a quarantine wrapper instead, which the consumer turns into a dead
# letter without decoding the message that keeps killing workers.
# KEYS[n]: crash counts; ARGV[m], ARGV[m + 1]: limit, counts TTL (ms)
_REQUEUE_COUNTED = """
local function requeue_counted(raw, queue, counts, limit, ttl, push)
  local digest = redis.sha1hex(raw)
  local crashes = redis.call('HINCRBY', counts, digest, 1)
  redis.call('PEXPIRE', counts, ttl)
  if crashes >= tonumber(limit) then
    redis.call('HDEL', counts, digest)
    raw = cjson.encode({quarantined = {crashes = crashes}, item = raw})
  end
  redis.call(push, queue, raw)
end
"""

# KEYS: registry, the consumer's held list, queue, crash counts; ARGV: consumer, limit, TTL
# Checked again here: the consumer may have renewed its deadline since it was listed. The
# oldest taken ends at the consuming end, so the messages keep their order. Returns how many
# moved, or -1 when the consumer is alive or already recovered.
_RECOVER = (
    _NOW
    + _REQUEUE_COUNTED
    + """
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not deadline or tonumber(deadline) > now_ms() then return -1 end
local moved = 0
while true do
  local raw = redis.call('LPOP', KEYS[2])
  if not raw then break end
  requeue_counted(raw, KEYS[3], KEYS[4], ARGV[2], ARGV[3], 'RPUSH')
  moved = moved + 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
return moved
"""
)

# KEYS: held list, queue; ARGV: message
# Back to the front of the queue (taken next). Only a message still held goes back, so one
# already acked or recovered is never doubled.
_GIVE_BACK = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[1])
return 1
"""

# KEYS: held list, queue, crash counts; ARGV: message, limit, TTL
# A message its worker rejected to be delivered again (Celery does when the process running it
# died): behind the others, counted.
_REQUEUE = (
    _REQUEUE_COUNTED
    + """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
requeue_counted(ARGV[1], KEYS[2], KEYS[3], ARGV[2], ARGV[3], 'LPUSH')
return 1
"""
)

# KEYS: registry, held list; ARGV: consumer
# A consumer that closes holding nothing leaves the registry at once; one still holding
# messages stays until its deadline passes and a live consumer takes them back.
_RETIRE = """
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
return 1
"""

# KEYS: held list, then the queue's priority lists in kombu's order
_TAKE_PRIORITIZED = """
for i = 2, #KEYS do
  local message = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
  if message then return message end
end
return false
"""


def fetch_keys(prefix: str, queue: str) -> tuple[str, str]:
    """The queue's registry of consumers, and what each consumer's held list is named after
    (append the consumer id)."""
    return f"{prefix}:{queue}:consumers", f"{prefix}:{queue}:held:"


def crash_counts_key(prefix: str, queue: str) -> str:
    """The hash counting, by message digest, how often consumers failed a message."""
    return f"{prefix}:{queue}:crashes"


def held_messages(client: redis.Redis, prefix: str, queue: str) -> int:
    """How many of the queue's messages its registered consumers have taken and not yet
    acknowledged (a dead consumer's count until a live one takes them back)."""
    registry, held_prefix = fetch_keys(prefix, queue)
    pipe = client.pipeline(transaction=False)
    for consumer in client.zrange(registry, 0, -1):
        pipe.llen(held_prefix + consumer.decode())
    return sum(pipe.execute())


class ReliableQoS(kombu_redis.QoS):
    """kombu's Redis QoS, except that a message fetched into a held list is acked, rejected
    and restored there instead of in kombu's `unacked` hash."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[Any, bytes] = {}
        """The exact bytes of each held message by delivery tag: what LREM must match."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        raw = self.channel._delivering
        if raw is None:
            super().append(message, delivery_tag)
            return
        self._held[delivery_tag] = raw
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        raw = self._held.get(delivery_tag)
        if raw is None:
            super().ack(delivery_tag)
            return
        self.channel._release(raw)
        self._held.pop(delivery_tag, None)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        raw = self._held.get(delivery_tag)
        if raw is None:
            super().reject(delivery_tag, requeue=requeue)
            return
        if requeue:
            self.channel._requeue(raw)
        else:
            self.channel._release(raw)
        self._held.pop(delivery_tag, None)
        virtual.QoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> Any:
        """Held messages go back to the front of the queue, newest first so the oldest is
        taken first; the rest is kombu's."""
        self._flush()
        mine = [tag for tag in self._delivered if tag in self._held]
        held = [self._held.pop(tag) for tag in mine]
        for tag in mine:
            del self._delivered[tag]
        if held:
            self.channel._hand_back(held[::-1])
        if not self._delivered:
            return None
        return super().restore_unacked(client)


class ReliableFetch:
    """The part of the channel that fetches with BLMOVE; mixed into kombu's two Redis
    channels (plain and Sentinel)."""

    QoS = ReliableQoS
    fetch_key_prefix = "fetch"
    fetch_heartbeat_ttl = DEFAULT_HEARTBEAT_TTL
    fetch_max_crashes = DEFAULT_MAX_CRASHES

    _delivering: bytes | None = None
    """The bytes of the message being delivered right now, for QoS.append."""
    _fetching = False
    """A BLMOVE was sent and its reply not read yet."""
    _lost_fetch_at: float | None = None
    """When a BLMOVE's reply was lost: Redis may have moved a message nobody here knows of."""
    _fetch_queue: str | None = None
    _consumer: str | None = None
    _queue_key: str
    _registry_key: str
    _held_prefix: str
    _held_key: str
    _crashes_key: str
    _priority_keys: list[str]
    _beaten_at = float("-inf")
    _fetch_redis: redis.Redis | None = None
    _scripts: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._no_ack_queues: set[str] = set()
        super().__init__(*args, **kwargs)

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def close(self) -> None:
        # Closing clears the channel's connection, which tells a torn-down one apart.
        reachable = not torn_down(self)
        try:
            super().close()
        finally:
            _keeper.forget(self)
            if reachable:
                self._retire()

    def _brpop_start(self, timeout: float | None = None) -> None:
        queue = self._reliable_queue()
        if queue is None:
            self._fetching = False
            super()._brpop_start(timeout)
            return
        if self._fetching:
            self._lost_fetch_at = time.monotonic()
        self._settle_lost_fetch()
        self._bind(queue)
        # A consumer's deadline must not pass while its BLMOVE can still move a message (a
        # registry entry is dropped once its deadline passed and its list is empty), so the
        # deadline is renewed here if the keeper has not done it lately, and BLMOVE's own
        # timeout stays well inside the TTL.
        if time.monotonic() - self._beaten_at > self._ttl / 2:
            self._beat()
            _keeper.watch(self)
        connection = self.client.connection
        self._in_poll = connection
        self._brpop_sent_at = time.monotonic()
        connection.send_command(
            "BLMOVE",
            self._queue_key,
            self._held_key,
            "RIGHT",
            "LEFT",
            self._fetch_timeout(timeout),
        )
        self._fetching = True

    def _brpop_read(self, **options: Any) -> bool:
        if not self._fetching:
            return super()._brpop_read(**options)
        self._fetching = False
        try:
            try:
                item = self.client.parse_response(self.client.connection, "BLMOVE", **options)
            except self.connection_errors:
                self._lost_fetch_at = time.monotonic()
                self.client.connection.disconnect()
                raise
            if item is None:
                item = self._take_prioritized()
            if item is None:
                raise Empty()
            self._deliver_held(item)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _poll_error(self, type: str, **options: Any) -> Any:
        if type == "BRPOP" and self._fetching:
            return self._brpop_read(**options)
        return super()._poll_error(type, **options)

    def _reliable_queue(self) -> str | None:
        queues = self.active_queues
        if len(queues) != 1 or queues[0] in self._no_ack_queues:
            return None
        if self._fetch_queue not in (None, queues[0]):
            return None
        return queues[0]

    def _bind(self, queue: str) -> None:
        """The channel's identity and keys, fixed at its first fetch."""
        if self._fetch_queue is not None:
            return
        self._consumer = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._queue_key = self.global_keyprefix + queue
        self._registry_key, self._held_prefix = fetch_keys(
            self.global_keyprefix + self.fetch_key_prefix, queue
        )
        self._held_key = self._held_prefix + self._consumer
        self._crashes_key = crash_counts_key(self.global_keyprefix + self.fetch_key_prefix, queue)
        self._priority_keys = [
            self.global_keyprefix + key
            for key in dict.fromkeys(self._q_for_pri(queue, pri) for pri in self.priority_steps)
            if key != queue
        ]
        self._fetch_queue = queue

    @property
    def _ttl(self) -> float:
        return float(self.fetch_heartbeat_ttl)

    @property
    def heartbeat_interval(self) -> float:
        return self._ttl / 4

    def _fetch_timeout(self, timeout: float | None) -> float:
        """Never 0 (which blocks for ever), never long against the TTL."""
        return min(timeout or self.brpop_timeout or 1, self.heartbeat_interval)

    def _redis(self) -> redis.Redis:
        """A client on the channel's pool that does not add kombu's key prefix (the keys here
        carry it already) and that outlives the channel's close, so acks of tasks that finish
        after a reconnection still reach the held list."""
        if self._fetch_redis is None:
            provider = self.pool.connection_kwargs.get("credential_provider")
            self._fetch_redis = redis.Redis(
                connection_pool=self.pool,
                **({"credential_provider": provider} if provider is not None else {}),
            )
            self._scripts = {
                name: self._fetch_redis.register_script(source)
                for name, source in (
                    ("beat", _BEAT),
                    ("expired", _EXPIRED),
                    ("recover", _RECOVER),
                    ("give_back", _GIVE_BACK),
                    ("requeue", _REQUEUE),
                    ("retire", _RETIRE),
                    ("take_prioritized", _TAKE_PRIORITIZED),
                )
            }
        return self._fetch_redis

    def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        client = self._redis()
        assert self._scripts is not None
        return self._scripts[name](keys=keys, args=args, client=client)

    def _beat(self) -> None:
        started = time.monotonic()
        self._script("beat", [self._registry_key], [self._consumer, int(self._ttl * 1000)])
        self._beaten_at = started

    def keep(self) -> None:
        """Renew this consumer's deadline, then take back the messages of dead consumers
        (the keeper thread's turn)."""
        self._beat()
        for raw in self._script("expired", [self._registry_key], [100]):
            consumer = raw.decode()
            if consumer == self._consumer:
                continue
            moved = self._script(
                "recover",
                [
                    self._registry_key,
                    self._held_prefix + consumer,
                    self._queue_key,
                    self._crashes_key,
                ],
                [consumer, *self._crash_limits],
            )
            if moved > 0:
                log.warning(
                    "consumer %s stopped renewing its deadline: %d message(s) it held are "
                    "back on %s",
                    consumer,
                    moved,
                    self._fetch_queue,
                )

    def _deliver_held(self, item: bytes) -> None:
        queue = self._fetch_queue
        if queue not in self.connection._callbacks:
            # Consuming was cancelled while the BLMOVE waited: the message goes back first.
            self._give_back(item)
            raise Empty()
        payload = kombu_redis.loads(bytes_to_str(item))
        self._delivering = item
        try:
            self.connection._deliver(payload, queue)
        finally:
            self._delivering = None

    def _take_prioritized(self) -> bytes | None:
        if not self._priority_keys:
            return None
        return self._script("take_prioritized", [self._held_key, *self._priority_keys], [])

    def _release(self, raw: bytes) -> None:
        self._redis().lrem(self._held_key, 1, raw)

    def _give_back(self, raw: bytes) -> bool:
        return bool(self._script("give_back", [self._held_key, self._queue_key], [raw]))

    def _requeue(self, raw: bytes) -> bool:
        return bool(
            self._script(
                "requeue",
                [self._held_key, self._queue_key, self._crashes_key],
                [raw, *self._crash_limits],
            )
        )

    @property
    def _crash_limits(self) -> tuple[int, int]:
        return int(self.fetch_max_crashes), int(CRASH_COUNTS_TTL * 1000)

    def _hand_back(self, held: list[bytes]) -> None:
        """At close: what this consumer still holds goes back to the queue now; if Redis cannot
        be reached it stays held, and comes back when the consumer's deadline passes."""
        if torn_down(self):
            log.warning(
                "broker connection torn down: %d held message(s) come back when this "
                "consumer's deadline passes",
                len(held),
            )
            return
        try:
            for raw in held:
                self._give_back(raw)
        except redis.RedisError as exc:
            log.warning(
                "could not put held messages back (%s): they come back when this consumer's "
                "deadline passes",
                exc,
            )

    def _settle_lost_fetch(self) -> None:
        """After a BLMOVE whose reply was lost, and once it can no longer move anything, put
        back what the held list has that no delivery here knows of."""
        if self._lost_fetch_at is None:
            return
        if time.monotonic() - self._lost_fetch_at < self._fetch_timeout(None) + 1:
            return
        self._lost_fetch_at = None
        # Listed first, compared after: a message acked in between is listed yet unknown, and
        # giving it back is a no-op because it is no longer held.
        listed = self._redis().lrange(self._held_key, 0, -1)
        known = Counter(self.qos._held.values())
        orphans = 0
        for raw in listed:
            if known[raw]:
                known[raw] -= 1
            elif self._give_back(raw):
                orphans += 1
        if orphans:
            log.warning("%d message(s) taken by a lost fetch are back on the queue", orphans)

    def _retire(self) -> None:
        if self._consumer is None:
            return
        try:
            self._script("retire", [self._registry_key, self._held_key], [self._consumer])
        except redis.RedisError as exc:
            log.debug("consumer %s not retired (%s): its deadline will pass", self._consumer, exc)


class _Keeper:
    """One thread per process renews the deadlines of its fetching channels and recovers dead
    consumers. A thread rather than the event loop, so a long task in the solo pool (which
    runs on the loop) does not make its worker look dead; it ends when no channel fetches."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: weakref.WeakSet[ReliableFetch] = weakref.WeakSet()
        self._thread: threading.Thread | None = None

    def watch(self, channel: ReliableFetch) -> None:
        with self._lock:
            self._channels.add(channel)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="tagging-fetch-keeper", daemon=True
                )
                self._thread.start()

    def forget(self, channel: ReliableFetch) -> None:
        with self._lock:
            self._channels.discard(channel)

    def _run(self) -> None:
        while True:
            with self._lock:
                channels = list(self._channels)
                if not channels:
                    self._thread = None
                    return
            for channel in channels:
                try:
                    channel.keep()
                except redis.RedisError as exc:
                    log.warning("reliable fetch: Redis unavailable (%s); trying again", exc)
                except Exception:
                    log.exception("reliable fetch: keeping consumer deadlines failed")
            time.sleep(min(channel.heartbeat_interval for channel in channels))


_keeper = _Keeper()


class Channel(ReliableFetch, kombu_redis.Channel):
    from_transport_options = kombu_redis.Channel.from_transport_options + OPTIONS


class SentinelChannel(ReliableFetch, kombu_redis.SentinelChannel):
    from_transport_options = kombu_redis.SentinelChannel.from_transport_options + OPTIONS


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


def install_reliable_fetch() -> None:
    """Make kombu resolve the Redis URL schemes to these transports. By scheme, not by
    Celery's `broker_transport`, so kombu still reads the URL as its scheme says (`rediss`
    without TLS options, Sentinel's list of sentinels); kombu caches what it resolved."""
    for scheme, name in (
        ("redis", "Transport"),
        ("rediss", "Transport"),
        ("sentinel", "SentinelTransport"),
    ):
        kombu_transport.TRANSPORT_ALIASES[scheme] = f"{__name__}:{name}"
        kombu_transport._transport_cache.pop(scheme, None)
