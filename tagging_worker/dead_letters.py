"""The dead-letter store: events that cannot be applied, kept in Redis until an operator acts.

A record is a hash (`json` holds the whole record; `reason` and `call_id` are copied out so
the Lua scripts can keep the indexes right without decoding JSON). Adding, removing and
replaying each run as one script, so a record is never half-indexed and a replay is never
both on the queue and in the store, nor in neither.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from tagging_worker.keys import Keys
from tagging_worker.messages import delivery_tag_of

# KEYS: all, record, by-reason, by-call; ARGV: id, json, reason, call_id, died_at_ms, max, prefix
_ADD = """
local old_reason = redis.call('HGET', KEYS[2], 'reason')
if old_reason and old_reason ~= ARGV[3] then
  redis.call('ZREM', ARGV[7] .. ':dead:reason:' .. old_reason, ARGV[1])
end
redis.call('HSET', KEYS[2], 'json', ARGV[2], 'reason', ARGV[3], 'call_id', ARGV[4])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
local trimmed = 0
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[6])
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    local rec = ARGV[7] .. ':dead:rec:' .. id
    local f = redis.call('HMGET', rec, 'reason', 'call_id')
    redis.call('ZREM', KEYS[1], id)
    if f[1] then redis.call('ZREM', ARGV[7] .. ':dead:reason:' .. f[1], id) end
    if f[2] then redis.call('ZREM', ARGV[7] .. ':dead:call:' .. f[2], id) end
    redis.call('DEL', rec)
    trimmed = trimmed + 1
  end
end
return trimmed
"""

# KEYS: all, record, fate, outcomes, pending ('' when unknown), journal, journal index
# ARGV: id, prefix, queue ('' to only delete), message, expected json, event_id, version,
#       delivery tag, now_ms
# A replay also gives the event its ledger entry back (it is no longer dead), registers its
# version as pending and journals its message, as publishing does.
_TAKE = """
local f = redis.call('HMGET', KEYS[2], 'reason', 'call_id', 'json')
if not f[3] then return 0 end
if ARGV[5] ~= '' and f[3] ~= ARGV[5] then return -1 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', ARGV[2] .. ':dead:reason:' .. f[1], ARGV[1])
redis.call('ZREM', ARGV[2] .. ':dead:call:' .. f[2], ARGV[1])
redis.call('DEL', KEYS[2])
if ARGV[3] == '' then return 1 end
if redis.call('DEL', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[4], 'dead', -1) end
redis.call('HINCRBY', KEYS[4], 'replayed', 1)
if KEYS[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6]) end
redis.call('HSET', KEYS[6], 'message', ARGV[4], 'tag', ARGV[8])
redis.call('ZADD', KEYS[7], ARGV[9], ARGV[6])
redis.call('LPUSH', ARGV[3], ARGV[4])
return 1
"""


@dataclass(frozen=True)
class Attempt:
    """One call to the API that did not succeed."""

    at: float
    code: str
    message: str
    http_status: int | None
    request_id: str | None
    kind: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "code": self.code,
            "message": self.message,
            "http_status": self.http_status,
            "request_id": self.request_id,
            "kind": self.kind,
        }


class ReplayConflict(Exception):
    """The record changed between reading it and replaying it; nothing was moved."""


class DeadLetterStore:
    def __init__(
        self, client: redis.Redis, keys: Keys, *, max_records: int, max_event_bytes: int = 65_536
    ) -> None:
        self._redis = client
        self._keys = keys
        self._max = max_records
        self._max_event_bytes = max_event_bytes
        self._add = client.register_script(_ADD)
        self._take = client.register_script(_TAKE)

    def add(
        self,
        *,
        record_id: str,
        reason: str,
        detail: str,
        event: Any,
        normalized: dict[str, Any] | None,
        attempts: list[dict[str, Any]],
        first_seen: float,
        task_id: str | None,
    ) -> int:
        """Store one record (same id: replaced, so a redelivered task never duplicates it).

        Returns how many of the oldest records were trimmed to honour the retention limit.
        """
        died_at = time.time()
        call_id = _field(normalized, event, "call_id")
        record = {
            "id": record_id,
            "reason": reason,
            "detail": detail,
            "call_id": call_id,
            "event_id": _field(normalized, event, "event_id"),
            "version": _field(normalized, event, "version"),
            "source": _field(normalized, event, "source"),
            "event": self._bounded(event),
            "normalized": normalized,
            "attempts": attempts,
            "first_seen": first_seen,
            "died_at": died_at,
            "task_id": task_id,
        }
        k = self._keys
        return int(
            self._add(
                keys=[
                    k.dead_all,
                    k.dead_record(record_id),
                    k.dead_by_reason(reason),
                    k.dead_by_call(str(call_id)),
                ],
                args=[
                    record_id,
                    json.dumps(record, ensure_ascii=False, default=repr),
                    reason,
                    str(call_id),
                    int(died_at * 1000),
                    self._max,
                    k.prefix,
                ],
            )
        )

    def _bounded(self, event: Any) -> Any:
        """A huge message is kept as its first bytes, so one bad producer cannot fill Redis."""
        text = json.dumps(event, ensure_ascii=False, default=repr)
        if len(text.encode()) <= self._max_event_bytes:
            return event
        head = text.encode()[: self._max_event_bytes].decode("utf-8", "ignore")
        return {"truncated": True, "size_bytes": len(text.encode()), "head": head}

    def get(self, record_id: str) -> dict[str, Any] | None:
        raw = self._redis.hget(self._keys.dead_record(record_id), "json")
        return json.loads(raw) if raw else None

    def count(self, *, reason: str | None = None, call_id: str | None = None) -> int:
        return int(self._redis.zcard(self._index(reason, call_id)))

    def list(
        self,
        *,
        reason: str | None = None,
        call_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Newest first. With both filters, the call's index is read and filtered by reason."""
        index = self._index(None, call_id) if call_id else self._index(reason, None)
        records: list[dict[str, Any]] = []
        start = offset
        while len(records) < limit:
            ids = self._redis.zrevrange(index, start, start + max(limit, 100) - 1)
            if not ids:
                break
            start += len(ids)
            for record in self._fetch(ids):
                if reason is None or record["reason"] == reason:
                    records.append(record)
        return records[:limit]

    def iter_ids(self, *, reason: str | None = None, call_id: str | None = None) -> Iterator[str]:
        """Oldest first, in pages, for bulk actions that remove what they are given.

        Only records that died before the walk began are visited, so a replayed event that
        dies again is not met twice; records the caller leaves in place are stepped over.
        """
        index = self._index(None, call_id) if call_id else self._index(reason, None)
        cutoff = int(time.time() * 1000)
        kept = 0
        while True:
            ids = self._redis.zrangebyscore(index, "-inf", cutoff, start=kept, num=500)
            if not ids:
                return
            for raw_id in ids:
                record_id = raw_id.decode()
                if (
                    call_id
                    and reason
                    and self._redis.hget(self._keys.dead_record(record_id), "reason")
                    != reason.encode()
                ):
                    kept += 1
                    continue
                yield record_id
                if self._redis.zscore(index, record_id) is not None:
                    kept += 1

    def delete(self, record_id: str) -> bool:
        """Forget a record; the event's fate stays `dead` in the ledger."""
        k = self._keys
        return (
            self._take(
                keys=[k.dead_all, k.dead_record(record_id), "", "", "", "", ""],
                args=[record_id, k.prefix, "", "", "", "", 0, "", 0],
            )
            == 1
        )

    def replay(self, record_id: str, *, queue: str, build_message: Callable[[dict], str]) -> bool:
        """Move one record back onto the queue in one step; False if it is no longer here."""
        raw = self._redis.hget(self._keys.dead_record(record_id), "json")
        if raw is None:
            return False
        record = json.loads(raw)
        event = record.get("normalized") or {}
        event_id = str(event.get("event_id") or record_id)
        k = self._keys
        pending = k.pending(event["call_id"]) if "version" in event else ""
        message = build_message(record)
        moved = self._take(
            keys=[
                k.dead_all,
                k.dead_record(record_id),
                k.fate(event_id),
                k.outcomes,
                pending,
                k.journal(event_id),
                k.journal_index,
            ],
            args=[
                record_id,
                k.prefix,
                queue,
                message,
                raw.decode(),
                event_id,
                event.get("version", 0),
                delivery_tag_of(message),
                int(time.time() * 1000),
            ],
        )
        if moved == -1:
            raise ReplayConflict(record_id)
        return moved == 1

    def _fetch(self, ids: list[bytes]) -> Iterator[dict[str, Any]]:
        pipe = self._redis.pipeline(transaction=False)
        for record_id in ids:
            pipe.hget(self._keys.dead_record(record_id.decode()), "json")
        for raw in pipe.execute():
            if raw:
                yield json.loads(raw)

    def _index(self, reason: str | None, call_id: str | None) -> str:
        if call_id:
            return self._keys.dead_by_call(call_id)
        if reason:
            return self._keys.dead_by_reason(reason)
        return self._keys.dead_all


def replay_event(record: dict[str, Any]) -> Any:
    """What a replay puts back: the validated event (its version fixed) or, if it never
    validated, the event as received, so an operator's fix can be replayed as it is."""
    return record["normalized"] if record.get("normalized") is not None else record["event"]


def _field(normalized: dict[str, Any] | None, event: Any, name: str) -> Any:
    if normalized is not None:
        return normalized.get(name)
    return event.get(name) if isinstance(event, dict) else None
