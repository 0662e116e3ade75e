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

from enum import Enum

import redis

from tagging_worker.keys import Keys
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


# KEYS: pending, queue; ARGV: version, event_id, message, ttl
_REGISTER = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
"""

# KEYS: applied, pending, parked, lease, fate, outcomes
# ARGV: version, event_id, parked member, token, lease_ms, ttl, fate_ttl
_BEGIN = """
if redis.call('EXISTS', KEYS[5]) == 1 then return 'duplicate' end
local v = tonumber(ARGV[1])
local applied = tonumber(redis.call('GET', KEYS[1]) or '-1')
if v <= applied then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('SET', KEYS[5], 'stale', 'EX', ARGV[7])
  redis.call('HINCRBY', KEYS[6], 'stale', 1)
  return 'stale'
end
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf') > 0 then
  redis.call('ZADD', KEYS[3], v, ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return 'parked'
end
if redis.call('SET', KEYS[4], ARGV[4], 'NX', 'PX', ARGV[5]) then return 'go' end
return 'busy'
"""

# KEYS: applied, pending, parked, lease, fate, outcomes
# ARGV: version, event_id, token, ttl, fate_ttl, fate key prefix
_APPLIED = """
local v = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '-1') < v then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
end
redis.call('ZREM', KEYS[2], ARGV[2])
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

# KEYS: applied, pending, parked, lease, fate, outcomes, queue
# ARGV: event_id, token, fate_ttl, ttl
_DEAD = """
if redis.call('GET', KEYS[4]) == ARGV[2] then redis.call('DEL', KEYS[4]) end
redis.call('ZREM', KEYS[2], ARGV[1])
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
redis.call('ZREM', KEYS[3], best[1])
redis.call('ZADD', KEYS[2], best[2], string.sub(best[1], 1, cut - 1))
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('LPUSH', KEYS[7], string.sub(best[1], cut + 1))
return 'resurrected'
"""

# KEYS: fate, outcomes; ARGV: outcome, fate_ttl
_FINISH = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
return 1
"""

# KEYS: lease; ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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
        """Put a message on the queue and register its version as pending, in one step."""
        self._register(
            keys=[self.keys.pending(call_id), self.queue],
            args=[version, event_id, message, self.version_ttl],
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
            args=[event_id, token, self.fate_ttl, self.version_ttl],
        ).decode()

    def finish(self, event_id: str, outcome: Outcome) -> bool:
        """A fate outside any call's ordering (an event too broken to have a call)."""
        return bool(
            self._finish(
                keys=[self.keys.fate(event_id), self.keys.outcomes],
                args=[outcome.value, self.fate_ttl],
            )
        )

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
        ]


def lease_ms_for(connect_timeout_ms: int, read_timeout_ms: int) -> int:
    """A lease must outlive the longest API call it guards, or two writers could overlap."""
    return connect_timeout_ms + read_timeout_ms + 5_000
