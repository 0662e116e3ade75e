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

This module is the kombu side: the channel and QoS that fetch, ack, reject and restore that
way, and the thread that keeps deadlines. The keys (behind kombu's `global_keyprefix`, named
after the `fetch_key_prefix` option) and every other step on them, the crash counts that
quarantine a message at `fetch_max_crashes` among them, are `tagging_worker.state.fetch`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter, deque
from queue import Empty
from typing import Any

import redis
from kombu import transport as kombu_transport
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from tagging_worker.ops.logs import Repeats
from tagging_worker.state.connection import refused_writes
from tagging_worker.state.fetch import (
    DEFAULT_HEARTBEAT_TTL,
    DEFAULT_MAX_CRASHES,
    FetchLedger,
    new_consumer_id,
)
from tagging_worker.worker.broker_teardown import torn_down

log = logging.getLogger(__name__)

OPTIONS = ("fetch_key_prefix", "fetch_heartbeat_ttl", "fetch_max_crashes")
"""Transport options this module reads (besides kombu's own)."""


_settle_failures = Repeats(log, "acks of held messages")
_fetch_refusals = Repeats(log, "fetching")


class ReliableQoS(kombu_redis.QoS):
    """kombu's Redis QoS, except that a message fetched into a held list is acked, rejected
    and restored there instead of in kombu's `unacked` hash.

    A lost connection restores what the channel holds while its tasks still run. When such a
    task ends, its ack or reject must not take kombu's path: that builds a client from the
    channel's connection, which is gone, and the AttributeError stops the worker. A held
    message was given back (or stays held until the consumer's deadline passes): its ack
    removes it from the held list if it is still there, best effort, so it is not delivered
    again for nothing; any second delivery meets the event's recorded fate. A message kombu
    fetched is left in its `unacked` hash for the visibility-timeout restore."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[Any, bytes] = {}
        """The exact bytes of each held message by delivery tag: what LREM must match."""
        self._given_up: dict[Any, bytes] = {}
        """Held messages restored while their tasks ran, by delivery tag."""
        self._pending: deque[tuple[bool, bytes]] = deque()
        """Held messages whose ack (False) or reject (True) Redis did not take yet."""

    def append(self, message: Any, delivery_tag: Any) -> None:
        raw = self.channel._delivering
        if raw is None:
            super().append(message, delivery_tag)
            return
        self._held[delivery_tag] = raw
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: Any) -> None:
        if self._ended_after_restore(delivery_tag, requeue=False):
            return
        raw = self._held.get(delivery_tag)
        if raw is None:
            if not self._forgotten_if_torn_down(delivery_tag):
                super().ack(delivery_tag)
            return
        self._settle_held(raw, requeue=False)
        self._held.pop(delivery_tag, None)
        virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._ended_after_restore(delivery_tag, requeue=requeue):
            return
        raw = self._held.get(delivery_tag)
        if raw is None:
            if not self._forgotten_if_torn_down(delivery_tag):
                super().reject(delivery_tag, requeue=requeue)
            return
        self._settle_held(raw, requeue=requeue)
        self._held.pop(delivery_tag, None)
        virtual.QoS.ack(self, delivery_tag)

    def _settle_held(self, raw: bytes, *, requeue: bool) -> None:
        """Ack (`requeue` False) or reject a held message in Redis. When Redis cannot (it is
        unreachable, full or a read-only replica) the failure must not reach the event loop,
        where it would stop the worker: the message stays held and the keeper thread tries
        again each turn (`settle_pending`) until Redis takes it."""
        try:
            self._settle_in_redis(raw, requeue=requeue)
        except redis.RedisError as exc:
            self._pending.append((requeue, raw))
            _settle_failures.failed(
                "could not ack or reject a held message (%s): trying again each turn", exc
            )
        else:
            _settle_failures.succeeded()

    def _settle_in_redis(self, raw: bytes, *, requeue: bool) -> None:
        """A held message back on the queue (rejected to be delivered again) or out of the held
        list (acked or rejected for good)."""
        (self.channel._requeue if requeue else self.channel._release)(raw)

    def settle_pending(self) -> None:
        """Ack or reject, now, what could not be when its task ended (the keeper's turn)."""
        for _ in range(len(self._pending)):
            requeue, raw = self._pending.popleft()
            try:
                self._settle_in_redis(raw, requeue=requeue)
            except redis.RedisError:
                self._pending.appendleft((requeue, raw))
                return

    def restore_unacked(self, client: Any = None) -> Any:
        """Held messages go back to the front of the queue, newest first so the oldest is
        taken first; the rest is kombu's."""
        self._flush()
        mine = [tag for tag in self._delivered if tag in self._held]
        held = []
        for tag in mine:
            raw = self._given_up[tag] = self._held.pop(tag)
            held.append(raw)
            del self._delivered[tag]
        if held:
            self.channel._hand_back(held[::-1])
        if not self._delivered:
            return None
        return super().restore_unacked(client)

    def _ended_after_restore(self, delivery_tag: Any, *, requeue: bool) -> bool:
        """The task of a message restored at a lost connection has ended: take the message out
        of the held list where it may still be (acked), or put it back on the queue if it is
        (rejected to be delivered again). True if the tag was such a message."""
        raw = self._given_up.pop(delivery_tag, None)
        if raw is None:
            return False
        try:
            self._settle_in_redis(raw, requeue=requeue)
        except redis.RedisError as exc:
            log.warning(
                "a task ended while Redis was unreachable (%s): its message comes back when "
                "this consumer's deadline passes, and meets the event's recorded fate",
                exc,
            )
        return True

    def _forgotten_if_torn_down(self, delivery_tag: Any) -> bool:
        """kombu's own ack and reject build a client from the channel's connection; when that
        is gone, the message stays in kombu's `unacked` hash (its visibility-timeout restore
        delivers it again) and is forgotten here. True if so."""
        if not torn_down(self.channel):
            return False
        log.warning(
            "broker connection gone: a message's ack is left to the visibility-timeout restore"
        )
        virtual.QoS.ack(self, delivery_tag)
        return True


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
    """The queue this channel fetches from, once bound (`_bind`)."""
    _consumer: str
    _ledger: FetchLedger
    _queue_key: str
    _held_key: str
    _beaten_at = float("-inf")
    _fetch_redis: redis.Redis | None = None

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
        self._bind(queue)
        try:
            self._settle_lost_fetch()
            # A consumer's deadline must not pass while its BLMOVE can still move a message
            # (a registry entry is dropped once its deadline passed and its list is empty), so
            # the deadline is renewed here if the keeper has not done it lately, and BLMOVE's
            # own timeout stays well inside the TTL.
            if time.monotonic() - self._beaten_at > self._ttl / 2:
                self._beat()
                _keeper.watch(self)
        except redis.exceptions.ResponseError as exc:
            refused_writes(exc)  # full or read-only: the BLMOVE below is refused too
            _fetch_refusals.failed("fetch refused (%s): taking nothing until it passes", exc)
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
            _fetch_refusals.succeeded()
            return True
        except redis.exceptions.ResponseError as exc:
            # A full or read-only Redis refuses the fetch's writes (BLMOVE, the scripts): the
            # consumption gate pauses consuming within a housekeeping tick; until then nothing
            # is delivered, and what a step may have moved is settled as a lost fetch.
            refused_writes(exc)
            self._lost_fetch_at = time.monotonic()
            _fetch_refusals.failed("fetch refused (%s): taking nothing until it passes", exc)
            raise Empty() from None
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
        self._consumer = new_consumer_id()
        self._ledger = FetchLedger(
            self._redis(),
            self.global_keyprefix + self.fetch_key_prefix,
            queue,
            queue_key=self.global_keyprefix + queue,
            priority_keys=[
                self.global_keyprefix + key
                for key in dict.fromkeys(self._q_for_pri(queue, pri) for pri in self.priority_steps)
                if key != queue
            ],
            max_crashes=int(self.fetch_max_crashes),
        )
        self._queue_key = self._ledger.queue_key
        self._held_key = self._ledger.held_key(self._consumer)
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
        return self._fetch_redis

    def _beat(self) -> None:
        started = time.monotonic()
        self._ledger.beat(self._consumer, self._ttl)
        self._beaten_at = started

    def keep(self) -> None:
        """Renew this consumer's deadline, then take back the messages of dead consumers
        (the keeper thread's turn)."""
        self._beat()
        self.qos.settle_pending()
        for consumer in self._ledger.expired(100):
            if consumer == self._consumer:
                continue
            moved = self._ledger.recover(consumer)
            if moved:
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
        return self._ledger.take_prioritized(self._consumer)

    def _release(self, raw: bytes) -> None:
        self._ledger.release(self._consumer, raw)

    def _give_back(self, raw: bytes) -> bool:
        return self._ledger.give_back(self._consumer, raw)

    def _requeue(self, raw: bytes) -> bool:
        return self._ledger.requeue(self._consumer, raw)

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
        listed = self._ledger.held(self._consumer)
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
        if self._fetch_queue is None:
            return
        try:
            self._ledger.retire(self._consumer)
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
        self._failures = Repeats(log, "reliable fetch")

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
            failed = False
            for channel in channels:
                try:
                    channel.keep()
                except redis.RedisError as exc:
                    failed = True
                    self._failures.failed(
                        "reliable fetch: Redis unavailable (%s); trying again", exc
                    )
                except Exception:
                    failed = True
                    self._failures.failed(
                        "reliable fetch: keeping consumer deadlines failed",
                        level=logging.ERROR,
                        exc_info=True,
                    )
            if not failed:
                self._failures.succeeded()
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
