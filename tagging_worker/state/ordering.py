"""Newest wins, and every event gets exactly one fate: the per-call and per-event state in Redis.

The API replaces a call's whole tag list, so an older version must never be written after a
newer one, and a write whose outcome is unknown may still land later. Per call, Redis keeps:

- `applied` and `tags`: the highest version applied and the tags it wrote (for repairs). They
  never expire while the call has a dead letter, so a replay cannot regress a forgotten call;
- `pending`: versions published but not finished (publishers register them), so an event
  older than one still on its way is *parked* instead of calling the API (coalescing);
- `parked` and its messages: those older events, one entry per event id, kept so that if the
  newer one dies the best of them is put back on the queue (the API must end with the highest
  version that was not dead-lettered);
- `lease`: one writer at a time, with an owner token and an expiry;
- `unsettled`: versions written with an unknown outcome (a timeout, a dropped connection), each
  until the API can no longer apply it; when that time has passed and the call's applied
  version is another one, the applied tags are written again (a *repair*). A success that finds
  a newer version already applied (its lease had run out) asks for a repair at once;
- `clock`: the last default version handed out, so default versions never tie.

Per event, a `fate` key (set once, with a TTL) records its outcome, so a redelivered or
duplicated message is recognised and the outcome counters count every event exactly once; a
dead letter is stored in the same step as its fate. Each step is one Lua script; nothing is read
in one round trip and written in another.

The one kind of key a script derives instead of receiving in KEYS (it depends on what the
script finds): the fates of parked events that a success supersedes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import redis

from tagging_worker.messages import build_settle_message
from tagging_worker.state.dead_letters import STORE_RECORD, DeadLetterStore, DeadRecord
from tagging_worker.state.keys import Keys
from tagging_worker.state.outcomes import Outcome


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


class Settle(str, Enum):
    SETTLED = "settled"
    """Nothing that may still land can regress the call: no write needed."""
    GO = "go"
    """A write of unknown outcome may have landed over the applied version: write it again."""
    BUSY = "busy"
    """Another worker is writing the call: check again shortly."""
    WAIT = "wait"
    """An unknown outcome can still land: check again when it no longer can."""


@dataclass(frozen=True)
class Repair:
    """What a repair writes: the call's applied version and its tags."""

    version: int
    tags_json: str


@dataclass(frozen=True)
class Recorded:
    """The answer to recording a success."""

    fate: Outcome | None
    """The fate given to the event, or None if another copy of it had finished first."""
    repair: bool
    """An older write landed on a newer one (this worker had lost its lease): repair now."""


# A version outlives every dead letter of its call (nothing else remembers that a replay of an
# older event would regress it); otherwise it lasts `ttl`.
_KEEP = """
local function keep(applied, tags, dead_by_call, ttl)
  if redis.call('EXISTS', dead_by_call) == 1 then
    redis.call('PERSIST', applied)
    redis.call('PERSIST', tags)
  else
    redis.call('EXPIRE', applied, ttl)
    redis.call('EXPIRE', tags, ttl)
  end
end
"""

_REINDEX = """
local function reindex(unsettled, index, call)
  local first = redis.call('ZRANGE', unsettled, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', index, call)
  else
    redis.call('ZADD', index, first[2], call)
  end
end
"""

# Members of `unsettled` are "<version>:<writer's token>:<event id>" (no event for a repair,
# which writes a version already applied). An entry whose event has no fate yet is that
# event's business: it will be written again or die. A newer one may have landed, so nothing
# older may be written meanwhile; it is settled only once its event has finished.
_IN_DOUBT = """
local function entry(member)
  local v, event = string.match(member, '^([^:]*):[^:]*:(.*)$')
  return v, event
end
local function finished(event, fate_prefix)
  return event == '' or redis.call('EXISTS', fate_prefix .. event) == 1
end
local function newer_in_doubt(unsettled, version, fate_prefix)
  for _, member in ipairs(redis.call('ZRANGE', unsettled, 0, -1)) do
    local v, event = entry(member)
    if tonumber(v) > version and not finished(event, fate_prefix) then return true end
  end
  return false
end
local function settleable(unsettled, now, fate_prefix)
  local found = {}
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', unsettled, '-inf', now)) do
    local _, event = entry(member)
    if finished(event, fate_prefix) then found[#found + 1] = member end
  end
  return found
end
"""

_CLOCK = """
local function next_version(clock, ttl)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local v = math.max(now, tonumber(redis.call('GET', clock) or '-1') + 1)
  local text = string.format('%.0f', v)
  redis.call('SET', clock, text, 'EX', ttl)
  return text
end
"""

# KEYS: the clock of each event's call (one per event, repeats allowed); ARGV: ttl
_DEFAULT_VERSIONS = (
    _CLOCK
    + """
local out = {}
for i, clock in ipairs(KEYS) do out[i] = next_version(clock, ARGV[1]) end
return out
"""
)

# KEYS: received, clock; ARGV: fate_ttl, version_ttl
_RECEIVE = (
    _CLOCK
    + """
local known = redis.call('GET', KEYS[1])
if known then return known end
local v = next_version(KEYS[2], ARGV[2])
redis.call('SET', KEYS[1], v, 'EX', ARGV[1])
return v
"""
)

# KEYS: pending, queue; ARGV: version, event_id, message, ttl
_REGISTER = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('LPUSH', KEYS[2], ARGV[3])
return 1
"""

# KEYS: applied, pending, parked, parked messages, lease, fate, outcomes, unsettled,
#       settle index
# ARGV: version, event_id, message, token, lease_ms, ttl, fate_ttl, in-doubt member, until_ms,
#       call_id, fate key prefix
# GO writes the request down as in doubt before it is sent (until the API can no longer apply
# it); a definite answer clears it, so a crash right after sending leaves it to be settled.
# An older event is parked while a newer one is pending, or in doubt with its event unfinished
# (its worker died right after sending it: the newer may have landed).
_BEGIN = (
    _IN_DOUBT
    + """
local id = ARGV[2]
if redis.call('EXISTS', KEYS[6]) == 1 then return 'duplicate' end
local v = tonumber(ARGV[1])
if v <= tonumber(redis.call('GET', KEYS[1]) or '-1') then
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('SET', KEYS[6], 'stale', 'EX', ARGV[7])
  redis.call('HINCRBY', KEYS[7], 'stale', 1)
  return 'stale'
end
if redis.call('ZCOUNT', KEYS[2], '(' .. ARGV[1], '+inf') > 0
   or newer_in_doubt(KEYS[8], v, ARGV[11]) then
  redis.call('ZADD', KEYS[3], v, id)
  redis.call('HSET', KEYS[4], id, ARGV[3])
  redis.call('EXPIRE', KEYS[3], ARGV[6])
  redis.call('EXPIRE', KEYS[4], ARGV[6])
  redis.call('ZREM', KEYS[2], id)
  return 'parked'
end
if not redis.call('SET', KEYS[5], ARGV[4], 'NX', 'PX', ARGV[5]) then return 'busy' end
redis.call('ZADD', KEYS[8], ARGV[9], ARGV[8])
redis.call('EXPIRE', KEYS[8], ARGV[6])
redis.call('ZADD', KEYS[9], 'LT', ARGV[9], ARGV[10])
return 'go'
"""
)

# KEYS: applied, tags, pending, parked, parked messages, lease, fate, outcomes, unsettled,
#       dead by call, settle index
# ARGV: version, event_id, token, tags, ttl, fate_ttl, fate key prefix, now_ms, call_id,
#       in-doubt member
_APPLIED = (
    _KEEP
    + _REINDEX
    + """
local v, id = tonumber(ARGV[1]), ARGV[2]
if redis.call('GET', KEYS[7]) == 'dead' then
  -- Dead-lettered meanwhile (another copy was refused), yet this write landed: undo it now.
  redis.call('ZADD', KEYS[9], ARGV[8], ARGV[10])
  redis.call('EXPIRE', KEYS[9], ARGV[5])
  reindex(KEYS[9], KEYS[11], ARGV[9])
  if redis.call('GET', KEYS[6]) == ARGV[3] then redis.call('DEL', KEYS[6]) end
  return {'', 1}
end
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local fate, repair = 'applied', 0
redis.call('ZREM', KEYS[9], ARGV[10])
if v > current then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[4])
elseif v < current or redis.call('GET', KEYS[2]) ~= ARGV[4] then
  if v < current then fate = 'stale' end
  redis.call('ZADD', KEYS[9], ARGV[8], ARGV[10])
  redis.call('EXPIRE', KEYS[9], ARGV[5])
  repair = 1
end
reindex(KEYS[9], KEYS[11], ARGV[9])
keep(KEYS[1], KEYS[2], KEYS[10], ARGV[5])
redis.call('ZREM', KEYS[3], id)
local superseded = 0
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])) do
  redis.call('HDEL', KEYS[5], member)
  if member ~= id and redis.call('SET', ARGV[7] .. member, 'superseded', 'NX', 'EX', ARGV[6]) then
    superseded = superseded + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[5], id)
if superseded > 0 then redis.call('HINCRBY', KEYS[8], 'superseded', superseded) end
if redis.call('GET', KEYS[6]) == ARGV[3] then redis.call('DEL', KEYS[6]) end
if not redis.call('SET', KEYS[7], fate, 'NX', 'EX', ARGV[6]) then return {'', repair} end
redis.call('HINCRBY', KEYS[8], fate, 1)
return {fate, repair}
"""
)

# KEYS: applied, tags, unsettled, lease, settle index
# ARGV: now_ms, token, lease_ms, call_id, ttl, until_ms (for the repair's own write), fate key
#       prefix
# A repair waits while a newer version than the applied one is in doubt and its event
# unfinished: writing the applied tags could undo it.
_SETTLE = (
    _REINDEX
    + _IN_DOUBT
    + """
local done = settleable(KEYS[3], ARGV[1], ARGV[7])
local current = redis.call('GET', KEYS[1])
local tags = redis.call('GET', KEYS[2])
local stray = false
for _, member in ipairs(done) do
  if entry(member) ~= current then stray = true end
end
if stray and current and tags then
  if newer_in_doubt(KEYS[3], tonumber(current), ARGV[7]) then return {'busy'} end
  if not redis.call('SET', KEYS[4], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'busy'} end
  redis.call('ZADD', KEYS[3], ARGV[6], current .. ':' .. ARGV[2] .. ':')
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  return {'go', current, tags}
end
for _, member in ipairs(done) do redis.call('ZREM', KEYS[3], member) end
reindex(KEYS[3], KEYS[5], ARGV[4])
if redis.call('EXISTS', KEYS[3]) == 1 then return {'wait'} end
return {'settled'}
"""
)

# KEYS: unsettled, lease, outcomes, settle index, applied
# ARGV: checked_ms, token, call_id, version written, counter ('repaired' or 'repair_failed'),
#       fate key prefix
_REPAIRED = (
    _REINDEX
    + _IN_DOUBT
    + """
redis.call('ZREM', KEYS[1], ARGV[4] .. ':' .. ARGV[2] .. ':')
if redis.call('GET', KEYS[5]) == ARGV[4] then
  for _, member in ipairs(settleable(KEYS[1], ARGV[1], ARGV[6])) do
    redis.call('ZREM', KEYS[1], member)
  end
end
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('HINCRBY', KEYS[3], ARGV[5], 1)
reindex(KEYS[1], KEYS[4], ARGV[3])
return 1
"""
)

# KEYS: settle index, queue; ARGV: now_ms, again_ms, then call_id and message pairs
_CLAIM_SETTLES = """
local claimed = 0
for i = 3, #ARGV, 2 do
  local due = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if due and tonumber(due) <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
    redis.call('LPUSH', KEYS[2], ARGV[i + 1])
    claimed = claimed + 1
  end
end
return claimed
"""

# KEYS: applied, tags, pending, parked, parked messages, lease, fate, outcomes, queue,
#       unsettled, settle index, dead by call, dead all, dead record, dead by reason, dead by code
# ARGV: event_id, token, fate_ttl, ttl, call_id, in-doubt member to clear ('' to keep it: the
#       last request's outcome is unknown), record json, reason, record's call_id, code,
#       died_at_ms
_DEAD = (
    _REINDEX
    + STORE_RECORD
    + """
local id = ARGV[1]
if redis.call('GET', KEYS[6]) == ARGV[2] then redis.call('DEL', KEYS[6]) end
if ARGV[6] ~= '' then
  redis.call('ZREM', KEYS[10], ARGV[6])
  reindex(KEYS[10], KEYS[11], ARGV[5])
end
redis.call('ZREM', KEYS[3], id)
redis.call('ZREM', KEYS[4], id)
redis.call('HDEL', KEYS[5], id)
if not redis.call('SET', KEYS[7], 'dead', 'NX', 'EX', ARGV[3]) then return 'duplicate' end
redis.call('HINCRBY', KEYS[8], 'dead', 1)
store_record(KEYS[13], KEYS[14], KEYS[15], KEYS[12], KEYS[16], id, ARGV[7], ARGV[8],
             ARGV[9], ARGV[10], ARGV[11])
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
local best = redis.call('ZREVRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #best == 0 then return 'dead' end
local score = tonumber(best[2])
if score <= tonumber(redis.call('GET', KEYS[1]) or '-1')
   or redis.call('ZCOUNT', KEYS[3], '(' .. best[2], '+inf') > 0 then
  return 'dead'
end
local parked = best[1]
local message = redis.call('HGET', KEYS[5], parked)
redis.call('ZREM', KEYS[4], parked)
redis.call('HDEL', KEYS[5], parked)
if not message then return 'dead' end
redis.call('ZADD', KEYS[3], best[2], parked)
redis.call('EXPIRE', KEYS[3], ARGV[4])
redis.call('LPUSH', KEYS[9], message)
return 'resurrected'
"""
)

# KEYS: fate, outcomes, then (a dead letter) dead by call, dead all, dead record, dead by
#       reason, dead by code
# ARGV: outcome, fate_ttl, event_id, then record json, reason, call_id, code, died_at_ms
_FINISH = (
    STORE_RECORD
    + """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
if #KEYS > 2 then
  store_record(KEYS[4], KEYS[5], KEYS[6], KEYS[3], KEYS[7], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
               ARGV[7], ARGV[8])
end
return 1
"""
)

# KEYS: lease, unsettled, settle index; ARGV: token, in-doubt member to clear ('' to keep it),
#       call_id
_RELEASE = (
    _REINDEX
    + """
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[2])
  reindex(KEYS[2], KEYS[3], ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


class Ordering:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        queue: str,
        version_ttl: int,
        fate_ttl: int,
        settle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.keys = keys
        self.queue = queue
        self.version_ttl = version_ttl
        self.fate_ttl = fate_ttl
        self.settle_ms = settle_ms
        self._default_versions = client.register_script(_DEFAULT_VERSIONS)
        self._receive = client.register_script(_RECEIVE)
        self._register = client.register_script(_REGISTER)
        self._begin = client.register_script(_BEGIN)
        self._applied = client.register_script(_APPLIED)
        self._settle = client.register_script(_SETTLE)
        self._repaired = client.register_script(_REPAIRED)
        self._claim_settles = client.register_script(_CLAIM_SETTLES)
        self._dead = client.register_script(_DEAD)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)

    def default_versions(self, call_ids: Sequence[str]) -> list[int]:
        """One default version per call id given (in order), each above every default the call
        had before, from Redis's clock: publishers on many hosts never tie, nor do events
        published in the same millisecond."""
        if not call_ids:
            return []
        answer = self._default_versions(
            keys=[self.keys.clock(call_id) for call_id in call_ids], args=[self.version_ttl]
        )
        return [int(v) for v in answer]

    def version_at_receipt(self, call_id: str, event_id: str) -> int:
        """The version of an event that came without one: given at its first receipt from the
        call's clock and remembered, so a redelivered or retried copy keeps its place."""
        return int(
            self._receive(
                keys=[self.keys.received(event_id), self.keys.clock(call_id)],
                args=[self.fate_ttl, self.version_ttl],
            )
        )

    def publish(
        self,
        call_id: str,
        version: int,
        event_id: str,
        message: str,
        *,
        pipe: redis.client.Pipeline | None = None,
    ) -> None:
        """Queue a message and register its version as pending, in one step."""
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
        k = self.keys
        now = _now_ms()
        answer = self._begin(
            keys=[
                k.applied(call_id),
                k.pending(call_id),
                k.parked(call_id),
                k.parked_messages(call_id),
                k.lease(call_id),
                k.fate(event_id),
                k.outcomes,
                k.unsettled(call_id),
                k.settle_index,
            ],
            args=[
                version,
                event_id,
                parked_message,
                token,
                lease_ms,
                self.version_ttl,
                self.fate_ttl,
                in_doubt(version, token, event_id),
                now + lease_ms + self.settle_ms,
                call_id,
                k.fate(""),
            ],
        )
        return Begin(answer.decode())

    def applied(
        self, call_id: str, version: int, event_id: str, tags_json: str, *, token: str
    ) -> Recorded:
        """Record a success; its fate is `stale` when a newer version was already applied
        (this write landed on top of it, and a repair is asked for at once)."""
        k = self.keys
        fate, repair = self._applied(
            keys=[
                *self._event_keys(call_id, event_id),
                k.unsettled(call_id),
                k.dead_by_call(call_id),
                k.settle_index,
            ],
            args=[
                version,
                event_id,
                token,
                tags_json,
                self.version_ttl,
                self.fate_ttl,
                k.fate(""),
                _now_ms(),
                call_id,
                in_doubt(version, token, event_id),
            ],
        )
        return Recorded(fate=Outcome(fate.decode()) if fate else None, repair=bool(repair))

    def settle(self, call_id: str, *, token: str, lease_ms: int) -> tuple[Settle, Repair | None]:
        """Whether a write of unknown outcome may have regressed the call; GO holds the lease
        and says what to write (itself written down as in doubt until it is answered)."""
        k = self.keys
        now = _now_ms()
        answer = self._settle(
            keys=[
                k.applied(call_id),
                k.tags(call_id),
                k.unsettled(call_id),
                k.lease(call_id),
                k.settle_index,
            ],
            args=[
                now,
                token,
                lease_ms,
                call_id,
                self.version_ttl,
                now + lease_ms + self.settle_ms,
                k.fate(""),
            ],
        )
        step = Settle(answer[0].decode())
        if step is Settle.GO:
            return step, Repair(version=int(answer[1]), tags_json=answer[2].decode())
        return step, None

    def repaired(
        self, call_id: str, repair: Repair, *, checked_ms: int, token: str, failed: bool = False
    ) -> None:
        """The applied tags were written again (or the API refused them for good, `failed`):
        what could land before `checked_ms` needs no further repair."""
        k = self.keys
        self._repaired(
            keys=[
                k.unsettled(call_id),
                k.lease(call_id),
                k.outcomes,
                k.settle_index,
                k.applied(call_id),
            ],
            args=[
                checked_ms,
                token,
                call_id,
                repair.version,
                "repair_failed" if failed else "repaired",
                k.fate(""),
            ],
        )

    def queue_due_settles(self, *, again_ms: int = 5_000, batch: int = 100) -> int:
        """Queue a settle check for each call whose writes of unknown outcome can no longer
        land; returns how many. A call is claimed again only after `again_ms`, so a check lost
        with its worker is sent again and a call whose check is waiting is not sent twice."""
        now = _now_ms()
        due = self.client.zrangebyscore(self.keys.settle_index, "-inf", now, start=0, num=batch)
        if not due:
            return 0
        args: list[str | int] = [now, now + again_ms]
        for raw in due:
            call_id = raw.decode()
            args += [call_id, build_settle_message(call_id, queue=self.queue)]
        return int(self._claim_settles(keys=[self.keys.settle_index, self.queue], args=args))

    def dead(
        self,
        call_id: str,
        event_id: str,
        record: DeadRecord,
        *,
        token: str,
        version: int | None = None,
    ) -> str:
        """Record the event's death and its dead letter in one step; puts the best parked older
        event back if there is one. `version` is given when the event's last request had a
        definite answer (it can no longer land). Returns "dead", "resurrected" or "duplicate"
        (the event had a fate: no dead letter is stored)."""
        k = self.keys
        return self._dead(
            keys=[
                *self._event_keys(call_id, event_id),
                self.queue,
                k.unsettled(call_id),
                k.settle_index,
                *DeadLetterStore.record_keys(k, record),
            ],
            args=[
                event_id,
                token,
                self.fate_ttl,
                self.version_ttl,
                call_id,
                in_doubt(version, token, event_id) if version is not None and token else "",
                *record.script_args(),
            ],
        ).decode()

    def finish(self, event_id: str, outcome: Outcome, record: DeadRecord | None = None) -> bool:
        """A fate outside any call's ordering (an event too broken to have a call), with its
        dead letter when it has one; False if the event already had a fate."""
        k = self.keys
        keys = [k.fate(event_id), k.outcomes]
        args: list[str | int] = [outcome.value, self.fate_ttl, event_id]
        if record is not None:
            keys += DeadLetterStore.record_keys(k, record)
            args += record.script_args()
        return bool(self._finish(keys=keys, args=args))

    def release(
        self, call_id: str, *, token: str, version: int | None = None, event_id: str = ""
    ) -> None:
        """Give up the call's lease. `version` (and the `event_id` it was written for, none for
        a repair) is given when no request is in doubt any more (none was sent, or it had a
        definite answer); without it the request stays in doubt."""
        k = self.keys
        member = in_doubt(version, token, event_id) if version is not None else ""
        self._release(
            keys=[k.lease(call_id), k.unsettled(call_id), k.settle_index],
            args=[token, member, call_id],
        )

    def _event_keys(self, call_id: str, event_id: str) -> list[str]:
        """What recording an event's end touches first, in the order its scripts number them."""
        k = self.keys
        return [
            k.applied(call_id),
            k.tags(call_id),
            k.pending(call_id),
            k.parked(call_id),
            k.parked_messages(call_id),
            k.lease(call_id),
            k.fate(event_id),
            k.outcomes,
        ]

    def applied_version(self, call_id: str) -> int | None:
        raw = self.client.get(self.keys.applied(call_id))
        return int(raw) if raw is not None else None

    def fate(self, event_id: str) -> str | None:
        raw = self.client.get(self.keys.fate(event_id))
        return raw.decode() if raw is not None else None


def in_doubt(version: int, token: str, event_id: str = "") -> str:
    """How a request is written down while its outcome is unknown: its version, its writer and
    its event (none for a repair)."""
    return f"{version}:{token}:{event_id}"


def lease_ms_for(connect_timeout_ms: int, read_timeout_ms: int, wait_ms: int = 0) -> int:
    """A lease must outlive the longest wait for a turn plus the longest API call it guards,
    or two writers could overlap."""
    return wait_ms + connect_timeout_ms + read_timeout_ms + 5_000


def _now_ms() -> int:
    return int(time.time() * 1000)
