"""Newest wins, and every event gets exactly one fate: the per-call and per-event state in Redis.

The API replaces a call's whole tag list, so an older version must never be written after a
newer one. Per call, Redis keeps:

- `applied`: the highest version applied (with a TTL);
- `pending`: versions published but not finished (publishers register them), so an event
  older than one still on its way is *parked* instead of calling the API (coalescing);
- `parked`: those older events, kept so that if the newer one dies, the best of them is put
  back on the queue (the API must end with the highest version that was not dead-lettered);
- `lease`: one writer at a time, with an owner token and an expiry.

Per event, a `fate` key (set once, with a TTL) records its outcome, so a redelivered or
duplicated message is recognised and the outcome counters count every event exactly once.
Each step is one Lua script; nothing is read in one round trip and written in another.
"""

from __future__ import annotations

import time
from enum import Enum

import redis

from tagging_worker.keys import Keys
from tagging_worker.messages import delivery_tag_of, enqueued_at_of, retagged
from tagging_worker.outcomes import Outcome


class Begin(str, Enum):
    GO = "go"
    """This worker holds the call's lease: call the API."""
    STALE = "stale"
    """A version at least as new was applied: finished, no API call."""
    PARKED = "parked"
    """A newer version is on its way: kept aside, no API call."""
    BUSY = "busy"
    """Another worker is writing this call: wait a moment and come back."""
    DUPLICATE = "duplicate"
    """This event already has its fate (a redelivered or duplicated message)."""


# Every script that ends an event's time on the queue also drops its journal entry; the
# journal is how a message lost between Redis and a dying worker is found and sent again.
_FORGET = """
local function forget(journal, index, id)
  redis.call('DEL', journal)
  redis.call('ZREM', index, id)
end
"""

# KEYS: pending, queue, journal, index; ARGV: version, event_id, message, ttl, tag, now_ms
_REGISTER = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('HSET', KEYS[3], 'message', ARGV[3], 'tag', ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[2])
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
"""

# KEYS: applied, pending, parked, lease, fate, outcomes, journal, index
# ARGV: version, event_id, parked member, token, lease_ms, ttl, fate_ttl
_BEGIN = (
    _FORGET
    + """
if redis.call('EXISTS', KEYS[5]) == 1 then
  forget(KEYS[7], KEYS[8], ARGV[2])
  return 'duplicate'
end
local v = tonumber(ARGV[1])
local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
if v <= applied then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('SET', KEYS[5], 'stale', 'EX', ARGV[7])
  redis.call('HINCRBY', KEYS[6], 'stale', 1)
  forget(KEYS[7], KEYS[8], ARGV[2])
  return 'stale'
end
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf') > 0 then
  redis.call('ZADD', KEYS[3], v, ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('ZREM', KEYS[2], ARGV[2])
  forget(KEYS[7], KEYS[8], ARGV[2])
  return 'parked'
end
if redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[5]) then return 'go' end
return 'busy'
"""
)

# KEYS: applied, pending, parked, lease, fate, outcomes, journal, index
# ARGV: version, event_id, token, ttl, fate_ttl, fate key prefix
_APPLIED = (
    _FORGET
    + """
local v = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '-1') < v then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
end
redis.call('ZREM', KEYS[2], ARGV[2])
forget(KEYS[7], KEYS[8], ARGV[2])
local superseded = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])) do
  local id = string.sub(member, 1, string.find(member, '\\n', 1, true) - 1)
  if redis.call('SET', ARGV[6] .. id, 'superseded', 'NX', 'EX', ARGV[5]) then
    superseded = superseded + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[1])
if superseded > 0 then redis.call('HINCRBY', KEYS[6], 'superseded', superseded) end
if redis.call('GET', KEYS[4]) == ARGV[3] then redis.call('DEL', KEYS[4]) end
if not redis.call('SET', KEYS[5], 'applied', 'NX', 'EX', ARGV[5]) then return 0 end
redis.call('HINCRBY', KEYS[6], 'applied', 1)
return 1
"""
)

# KEYS: applied, pending, parked, lease, fate, outcomes, journal, index, queue
# ARGV: event_id, token, fate_ttl, ttl, journal key prefix, now_ms
_DEAD = (
    _FORGET
    + """
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
redis.call('ZREM', KEYS[2], ARGV[1])
forget(KEYS[7], KEYS[8], ARGV[1])
if not redis.call('SET', KEYS[5], 'dead', 'NX', 'EX', ARGV[3]) then return 'duplicate' end
redis.call('HINCRBY', KEYS[6], 'dead', 1)
local best = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
if #best == 0 then return 'dead' end
local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
local score = tonumber(best[2])
if score <= applied or redis.call('ZCOUNT', KEYS[2], '(' .. best[2], '+inf') > 0 then
  return 'dead'
end
local cut = string.find(best[1], '\\n', 1, true)
local id = string.sub(best[1], 1, cut - 1)
local message = string.sub(best[1], cut + 1)
redis.call('ZREM', KEYS[3], best[1])
redis.call('ZADD', KEYS[2], best[2], id)
redis.call('EXPIRE', KEYS[2], ARGV[4])
local tag = cjson.decode(message)['properties']['delivery_tag']
redis.call('HSET', ARGV[5] .. id, 'message', message, 'tag', tag)
redis.call('EXPIRE', ARGV[5] .. id, ARGV[4])
redis.call('ZADD', KEYS[8], ARGV[6], id)
redis.call('LPUSH', KEYS[9], message)
return 'resurrected'
"""
)

# KEYS: fate, outcomes, journal, index; ARGV: outcome, fate_ttl, event_id
_FINISH = (
    _FORGET
    + """
forget(KEYS[3], KEYS[4], ARGV[3])
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""
)

# KEYS: fate, journal, index; ARGV: event_id, message, tag, enqueued_at_ms, ttl
_TRACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[2], 'message', ARGV[2], 'tag', ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"""

# KEYS: fate, journal, index, kombu's unacked hash, queue
# ARGV: event_id, expected tag, new message, new tag, now_ms
_RECOVER = (
    _FORGET
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  forget(KEYS[2], KEYS[3], ARGV[1])
  return 'finished'
end
if redis.call('HGET', KEYS[2], 'tag') ~= ARGV[2] then return 'moved' end
if redis.call('HEXISTS', KEYS[4], ARGV[2]) == 1 then return 'in_flight' end
redis.call('HSET', KEYS[2], 'message', ARGV[3], 'tag', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('LPUSH', KEYS[5], ARGV[3])
return 'recovered'
"""
)

# KEYS: lease; ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

KOMBU_UNACKED = "unacked"
"""Where kombu's Redis transport records the messages it delivered and awaits acks for."""


class Ordering:
    def __init__(
        self, client: redis.Redis, keys: Keys, *, queue: str, version_ttl: int, fate_ttl: int
    ) -> None:
        self.client = client
        self.keys = keys
        self.queue = queue
        self.version_ttl = version_ttl
        self.fate_ttl = fate_ttl
        self._register = client.register_script(_REGISTER)
        self._begin = client.register_script(_BEGIN)
        self._applied = client.register_script(_APPLIED)
        self._dead = client.register_script(_DEAD)
        self._finish = client.register_script(_FINISH)
        self._track = client.register_script(_TRACK)
        self._recover = client.register_script(_RECOVER)
        self._release = client.register_script(_RELEASE)

    def publish(
        self,
        call_id: str,
        version: int,
        event_id: str,
        message: str,
        *,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Queue a message, register its version as pending and journal it, in one step."""
        self._register(
            keys=[
                self.keys.pending(call_id),
                self.queue,
                self.keys.journal(event_id),
                self.keys.journal_index,
            ],
            args=[
                version,
                event_id,
                message,
                self.version_ttl,
                delivery_tag_of(message),
                enqueued_at_of(message) or _now_ms(),
            ],
            client=pipe or self.client,
        )

    def begin(
        self,
        call_id: str,
        version: int,
        event_id: str,
        parked_message: str,
        *,
        token: str,
        lease_ms: int,
    ) -> Begin:
        answer = self._begin(
            keys=self._call_keys(call_id, event_id),
            args=[
                version,
                event_id,
                f"{event_id}\n{parked_message}",
                token,
                lease_ms,
                self.version_ttl,
                self.fate_ttl,
            ],
        )
        return Begin(answer.decode())

    def applied(self, call_id: str, version: int, event_id: str, *, token: str) -> bool:
        """Record the success; False if another copy of this event had already finished."""
        return bool(
            self._applied(
                keys=self._call_keys(call_id, event_id),
                args=[
                    version,
                    event_id,
                    token,
                    self.version_ttl,
                    self.fate_ttl,
                    self.keys.fate(""),
                ],
            )
        )

    def dead(self, call_id: str, event_id: str, *, token: str) -> str:
        """Record a dead-lettered event; puts the best parked older event back if there is one.

        Returns "dead", "resurrected" or "duplicate".
        """
        return self._dead(
            keys=[*self._call_keys(call_id, event_id), self.queue],
            args=[
                event_id,
                token,
                self.fate_ttl,
                self.version_ttl,
                self.keys.journal(""),
                _now_ms(),
            ],
        ).decode()

    def finish(self, event_id: str, outcome: Outcome) -> bool:
        """A fate outside any call's ordering (an event too broken to have a call)."""
        return bool(
            self._finish(
                keys=[
                    self.keys.fate(event_id),
                    self.keys.outcomes,
                    self.keys.journal(event_id),
                    self.keys.journal_index,
                ],
                args=[outcome.value, self.fate_ttl, event_id],
            )
        )

    def track(self, event_id: str, message: str, *, enqueued_at_ms: int) -> None:
        """The event's message is now this one (a retry, due at `enqueued_at_ms`)."""
        self._track(
            keys=[self.keys.fate(event_id), self.keys.journal(event_id), self.keys.journal_index],
            args=[event_id, message, delivery_tag_of(message), enqueued_at_ms, self.version_ttl],
        )

    def recover_lost(self, *, grace_ms: int, batch: int = 500) -> int:
        """Send again the messages of unfinished events that are neither on the queue nor
        held by a worker; returns how many.

        The queue is first in, first out, so a journaled message that entered it before the
        queue's oldest message did (less `grace_ms` for clocks and the retry mover's lag) has
        left it; if kombu does not list it as delivered either, it was lost in between (a
        worker killed right after Redis handed it over, a connection cut mid-reply). A wrong
        guess only sends a duplicate, which the event's fate makes harmless. At most `batch`
        journal entries are looked at per call (the oldest), so a call's work is bounded.
        """
        now = _now_ms()
        oldest = self.client.lindex(self.queue, -1)
        oldest_at = now if oldest is None else enqueued_at_of(oldest)
        if oldest_at is None:
            return 0  # another producer's message leads the queue: no safe cut-off now
        cutoff = min(now, oldest_at) - grace_ms
        recovered = 0
        candidates = self.client.zrangebyscore(
            self.keys.journal_index, "-inf", f"({cutoff}", start=0, num=batch
        )
        for raw_id in candidates:
            event_id = raw_id.decode()
            message, tag = self.client.hmget(self.keys.journal(event_id), "message", "tag")
            if message is None:
                self.client.zrem(self.keys.journal_index, event_id)
                continue
            fresh = retagged(message.decode(), enqueued_at_ms=now)
            answer = self._recover(
                keys=[
                    self.keys.fate(event_id),
                    self.keys.journal(event_id),
                    self.keys.journal_index,
                    KOMBU_UNACKED,
                    self.queue,
                ],
                args=[event_id, tag, fresh, delivery_tag_of(fresh), now],
            ).decode()
            recovered += answer == "recovered"
        return recovered

    def release(self, call_id: str, *, token: str) -> None:
        self._release(keys=[self.keys.lease(call_id)], args=[token])

    def applied_version(self, call_id: str) -> int | None:
        raw = self.client.get(self.keys.applied(call_id))
        return int(raw) if raw is not None else None

    def fate(self, event_id: str) -> str | None:
        raw = self.client.get(self.keys.fate(event_id))
        return raw.decode() if raw is not None else None

    def _call_keys(self, call_id: str, event_id: str) -> list[str]:
        k = self.keys
        return [
            k.applied(call_id),
            k.pending(call_id),
            k.parked(call_id),
            k.lease(call_id),
            k.fate(event_id),
            k.outcomes,
            k.journal(event_id),
            k.journal_index,
        ]


def lease_ms_for(connect_timeout_ms: int, read_timeout_ms: int, wait_ms: int = 0) -> int:
    """A lease must outlive the longest wait for a turn plus the longest API call it guards,
    or two writers could overlap."""
    return wait_ms + connect_timeout_ms + read_timeout_ms + 5_000


def _now_ms() -> int:
    return int(time.time() * 1000)
