"""Reliable fetch's ledger in Redis: who holds which of a queue's messages, and how often a
message was in the hands of a consumer that failed it.

The consumer side (kombu's channel, which moves a message from the queue into its held list
with BLMOVE) is `tagging_worker.worker.reliable_fetch`; every other step on these keys is here,
each one a script (`lua/fetch_*.lua`).

Keys, `<prefix>` being the `fetch_key_prefix` transport option behind kombu's
`global_keyprefix`: `<prefix>:<queue>:consumers`, a sorted set of consumer ids by deadline (ms,
Redis's clock, so hosts' clocks never matter), `<prefix>:<queue>:held:<consumer id>`, a list per
consumer (newest taken at the head), and `<prefix>:<queue>:crashes`, how often each message (by
its SHA-1) was in the hands of a consumer that died or of a process that was lost (a prefork
child killed while running it).

A message that keeps killing whoever takes it would come back for ever. So each time one is put
back because of a failure, that is counted, and at the crash limit it goes back wrapped as
`{"quarantined": {"crashes": n}, "item": <the message>}`, which `poison.tolerant_loads` turns
into a dead letter without decoding what is inside. Everything a dying consumer held counts a
crash, the message that killed it and those beside it alike; only the one that keeps killing
comes back often enough to reach the limit, unless the same messages keep being taken together.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import redis

from tagging_worker.messages import ORIGIN
from tagging_worker.state import scripts

DEFAULT_HEARTBEAT_TTL = 20.0
"""Seconds a consumer may go without renewing its deadline before it counts as dead."""
DEFAULT_MAX_CRASHES = 3
"""A message whose consumer failed it this many times is quarantined, not delivered again."""
CRASH_COUNTS_TTL = 86_400.0
"""Seconds a message's failures are remembered after the last one."""
QUARANTINED = "quarantined"
"""The key that marks a quarantine wrapper: `{"quarantined": {"crashes": n}, "item": raw}`."""


def new_consumer_id() -> str:
    """A consumer's id in the registry: its process's `ORIGIN` (the origin of the messages that
    process builds, retries included), then a part of its own."""
    return f"{ORIGIN}:{uuid.uuid4().hex[:12]}"


def consumer_origin(consumer: str) -> str:
    """The `ORIGIN` of the process a consumer id names."""
    return consumer.rsplit(":", 1)[0]


class FetchLedger:
    """One queue's consumers, their held lists and its crash counts.

    `prefix` is where the keys start (kombu's `global_keyprefix` already in front); `queue_key`
    is the queue's list as kombu names it (its `global_keyprefix` and the queue's name), and
    `priority_keys` the lists kombu keeps messages published with a priority in, in the order
    they are taken; all three default to what a client without kombu's prefix sees."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        queue: str,
        *,
        queue_key: str | None = None,
        priority_keys: Sequence[str] = (),
        max_crashes: int = DEFAULT_MAX_CRASHES,
    ) -> None:
        self._redis = client
        self.queue = queue
        self.queue_key = queue if queue_key is None else queue_key
        self.registry = f"{prefix}:{queue}:consumers"
        """Sorted set of the queue's consumer ids by deadline (ms, Redis's clock)."""
        self._held_prefix = f"{prefix}:{queue}:held:"
        self.crashes = f"{prefix}:{queue}:crashes"
        """Hash counting, by message digest, how often consumers failed a message."""
        self._priority_keys = list(priority_keys)
        self._crash_limits = (int(max_crashes), int(CRASH_COUNTS_TTL * 1000))
        self._beat = scripts.register(client, "fetch_beat")
        self._expired = scripts.register(client, "fetch_expired")
        self._recover = scripts.register(client, "fetch_recover")
        self._give_back = scripts.register(client, "fetch_give_back")
        self._requeue = scripts.register(client, "fetch_requeue")
        self._retire = scripts.register(client, "fetch_retire")
        self._take_prioritized = scripts.register(client, "fetch_take_prioritized")

    def held_key(self, consumer: str) -> str:
        """The list of what `consumer` took and has not acknowledged yet."""
        return self._held_prefix + consumer

    def beat(self, consumer: str, ttl: float) -> None:
        """Renew `consumer`'s deadline to `ttl` seconds from now."""
        self._beat(keys=[self.registry], args=[consumer, int(ttl * 1000)])

    def expired(self, batch: int = 100) -> list[str]:
        """Up to `batch` consumers past their deadline (read only)."""
        return [raw.decode() for raw in self._expired(keys=[self.registry], args=[batch])]

    def recover(self, consumer: str) -> int | None:
        """Put what a dead consumer held back on the queue, each message counted as a crash,
        and drop the consumer: how many went back, or None when it turned out alive (it renewed
        its deadline since it was listed) or another consumer recovered it first."""
        moved = int(
            self._recover(
                keys=[self.registry, self.held_key(consumer), self.queue_key, self.crashes],
                args=[consumer, *self._crash_limits],
            )
        )
        return None if moved < 0 else moved

    def give_back(self, consumer: str, raw: bytes) -> bool:
        """Put a held message back at the front of the queue, uncounted; False when it was not
        held any more (acked or recovered), so nothing is doubled."""
        return bool(self._give_back(keys=[self.held_key(consumer), self.queue_key], args=[raw]))

    def requeue(self, consumer: str, raw: bytes) -> bool:
        """Put a held message back behind the others, counted as a crash (quarantined at the
        limit); False when it was not held any more."""
        return bool(
            self._requeue(
                keys=[self.held_key(consumer), self.queue_key, self.crashes],
                args=[raw, *self._crash_limits],
            )
        )

    def release(self, consumer: str, raw: bytes) -> None:
        """An acknowledged message leaves the held list."""
        self._redis.lrem(self.held_key(consumer), 1, raw)

    def retire(self, consumer: str) -> bool:
        """Drop a closing consumer from the registry if it holds nothing; False if it still
        does (it stays until its deadline passes and a live consumer takes them back)."""
        return bool(self._retire(keys=[self.registry, self.held_key(consumer)], args=[consumer]))

    def take_prioritized(self, consumer: str) -> bytes | None:
        """Move one message published with a priority into `consumer`'s held list, or None
        when there is none (or the queue has no priority lists)."""
        if not self._priority_keys:
            return None
        message: bytes | None = self._take_prioritized(
            keys=[self.held_key(consumer), *self._priority_keys]
        )
        return message

    def held(self, consumer: str) -> list[bytes]:
        """What `consumer` holds, newest taken first."""
        return list(self._redis.lrange(self.held_key(consumer), 0, -1))

    def live_consumers(self) -> list[str]:
        """The consumers whose deadline has not passed (on Redis's clock)."""
        seconds, micros = self._redis.time()
        now_ms = seconds * 1000 + micros // 1000
        return [raw.decode() for raw in self._redis.zrangebyscore(self.registry, now_ms, "+inf")]

    def held_messages(self) -> int:
        """How many of the queue's messages its registered consumers have taken and not yet
        acknowledged (a dead consumer's count until a live one takes them back)."""
        pipe = self._redis.pipeline(transaction=False)
        for consumer in self._redis.zrange(self.registry, 0, -1):
            pipe.llen(self.held_key(consumer.decode()))
        return sum(pipe.execute())


def held_messages(client: redis.Redis, prefix: str, queue: str) -> int:
    """`FetchLedger.held_messages` for a client without kombu's key prefix (`status`)."""
    return FetchLedger(client, prefix, queue).held_messages()
