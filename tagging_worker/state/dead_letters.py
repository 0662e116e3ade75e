"""The dead-letter store: events that cannot be applied, kept in Redis until an operator acts.

A record is a hash (`json` holds the whole record; `reason`, `call_id` and the error `code`
are copied out so the Lua scripts can keep the indexes right without decoding JSON). Adding,
removing and replaying each run as one script, so a record is never half-indexed and a replay
is never both on the queue and in the store, nor in neither.

What a record may hold is one schema (`record_problem`): `prepare` only writes records that pass
it, `dead import` refuses lines that do not, and a stored record that does not (written by hand
or by an older version) is read as damaged, shown as such and never replayed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import redis
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from tagging_worker.event import (
    MAX_CALL_ID_LENGTH,
    MAX_EVENT_ID_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_VERSION,
)
from tagging_worker.plain_json import SURROGATE
from tagging_worker.state.dead_filter import DeadFilter, last_code
from tagging_worker.state.keys import Keys

if TYPE_CHECKING:
    from tagging_worker.settings import Settings

# Every record is indexed by time of death (all), reason, call and, when it has one, the
# error code it died of; each script keeps all four right.

# Stores a new record (an existing one is left as it is: a second death of the same event is
# refused by its fate before this runs). Used by the scripts that record an event's fate.
STORE_RECORD = """
local function store_record(all, record, by_reason, by_call, by_code, id, json, reason, call,
                            code, died_at)
  if redis.call('EXISTS', record) == 1 then return end
  redis.call('HSET', record, 'json', json, 'reason', reason, 'call_id', call, 'code', code)
  redis.call('ZADD', all, died_at, id)
  redis.call('ZADD', by_reason, died_at, id)
  redis.call('ZADD', by_call, died_at, id)
  if code ~= '' then redis.call('ZADD', by_code, died_at, id) end
end
"""

_UNINDEX = """
local function unindex(prefix, id, reason, call, code)
  if reason then redis.call('ZREM', prefix .. ':dead:reason:' .. reason, id) end
  if call then redis.call('ZREM', prefix .. ':dead:call:' .. call, id) end
  if code and code ~= '' then redis.call('ZREM', prefix .. ':dead:code:' .. code, id) end
end
"""

_TRIM = """
local function trim(all, prefix, max)
  local trimmed = 0
  local excess = redis.call('ZCARD', all) - tonumber(max)
  if excess <= 0 then return 0 end
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, excess - 1)) do
    local rec = prefix .. ':dead:rec:' .. id
    local f = redis.call('HMGET', rec, 'reason', 'call_id', 'code')
    redis.call('ZREM', all, id)
    unindex(prefix, id, f[1], f[2], f[3])
    redis.call('DEL', rec)
    trimmed = trimmed + 1
  end
  return trimmed
end
"""

# KEYS: all; ARGV: max, prefix
_TRIM_OLDEST = _UNINDEX + _TRIM + "return trim(KEYS[1], ARGV[2], ARGV[1])"

# KEYS: all, record, fate, outcomes, applied, tags
# ARGV: id, json, reason, call_id, code ('' for none), died_at_ms, max, prefix, keep ('1':
#       leave an existing record alone and return -1), fate_ttl
# An event whose fate here is other than dead is refused (-2): it was replayed and finished
# since the record was exported. Otherwise the event's fate becomes dead if it had none, so the
# counters count it once and a replay gives the fate back, and its call's version is kept as
# long as the record.
_ADD = (
    _UNINDEX
    + _TRIM
    + """
local prefix = ARGV[8]
if ARGV[9] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local fate = redis.call('GET', KEYS[3])
if fate and fate ~= 'dead' then return -2 end
if not fate then
  redis.call('SET', KEYS[3], 'dead', 'EX', ARGV[10])
  redis.call('HINCRBY', KEYS[4], 'dead', 1)
end
local old = redis.call('HMGET', KEYS[2], 'reason', 'call_id', 'code')
unindex(prefix, ARGV[1], old[1], old[2], old[3])
redis.call('HSET', KEYS[2], 'json', ARGV[2], 'reason', ARGV[3], 'call_id', ARGV[4], 'code', ARGV[5])
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[1])
redis.call('ZADD', prefix .. ':dead:reason:' .. ARGV[3], ARGV[6], ARGV[1])
redis.call('ZADD', prefix .. ':dead:call:' .. ARGV[4], ARGV[6], ARGV[1])
if ARGV[5] ~= '' then redis.call('ZADD', prefix .. ':dead:code:' .. ARGV[5], ARGV[6], ARGV[1]) end
redis.call('PERSIST', KEYS[5])
redis.call('PERSIST', KEYS[6])
return trim(KEYS[1], prefix, ARGV[7])
"""
)

# KEYS: all, record, fate, outcomes, pending, applied, tags, dead by call (the call's keys ''
#       when the record has no call)
# ARGV: id, prefix, queue ('' to only delete), message, expected json, event_id, version, the
#       call's version when the event died ('' when unknown), ttl
# A replay also gives the event its ledger entry back (it is no longer dead) and registers its
# version as pending, as publishing does. The call's version is brought back up to what it was
# when the event died, should Redis have forgotten it (the tags it wrote are unknown then, so
# the tags of a lower version are dropped: a repair must not write them), and expires again
# once the call has no dead letter left.
_TAKE = (
    _UNINDEX
    + """
local f = redis.call('HMGET', KEYS[2], 'reason', 'call_id', 'json', 'code')
if not f[3] then return 0 end
if ARGV[5] ~= '' and f[3] ~= ARGV[5] then return -1 end
redis.call('ZREM', KEYS[1], ARGV[1])
unindex(ARGV[2], ARGV[1], f[1], f[2], f[4])
redis.call('DEL', KEYS[2])
if KEYS[6] ~= '' then
  if ARGV[8] ~= '' and tonumber(redis.call('GET', KEYS[6]) or '-1') < tonumber(ARGV[8]) then
    redis.call('SET', KEYS[6], ARGV[8])
    redis.call('DEL', KEYS[7])
  end
  if redis.call('EXISTS', KEYS[8]) == 0 then
    redis.call('EXPIRE', KEYS[6], ARGV[9])
    redis.call('EXPIRE', KEYS[7], ARGV[9])
  end
end
if ARGV[3] == '' then return 1 end
if redis.call('DEL', KEYS[3]) == 1 then redis.call('HINCRBY', KEYS[4], 'dead', -1) end
redis.call('HINCRBY', KEYS[4], 'replayed', 1)
if KEYS[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[7], ARGV[6]) end
redis.call('LPUSH', ARGV[3], ARGV[4])
return 1
"""
)


MAX_DETAIL_CHARS = 2_000
"""A detail is an error message: longer ones are clipped when a record is made."""
MAX_TIME = 253_402_300_799.0
"""9999-12-31T23:59:59Z, the last second a date can show: later is no time of death."""
_LINE_SLACK = 1 << 20
"""Room in an exported line for everything but the event and the validated event (clipped
attempts, detail and ids take far less)."""
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")


@dataclass(frozen=True)
class RecordRules:
    """What a record must be to be stored here. None leaves that side unchecked: sizes are
    checked when storing, not when reading, so lowering the limit damages no stored record."""

    max_raw_bytes: int | None
    """TAGGING_DEAD_LETTER_MAX_RAW_BYTES: the event and the validated event are kept up to it."""
    key_prefix: str | None = None
    queue: str | None = None


def _text(*, most: int | None = None, least: int = 1) -> AfterValidator:
    """A length check that leaves the text alone: pydantic's own refuses lone surrogates,
    which a record may hold (text decoded from JSON `"\\ud800"`)."""

    def check(text: str) -> str:
        if len(text) < least:
            raise PydanticCustomError("empty", "is empty")
        if most is not None and len(text) > most:
            raise PydanticCustomError(
                "long", "is {size} characters, more than {most}", {"size": len(text), "most": most}
            )
        return text

    return AfterValidator(check)


def _key_safe(text: str) -> str:
    """Ids, reasons and calls name Redis keys, which must be UTF-8."""
    if SURROGATE.search(text):
        raise PydanticCustomError("surrogate", "holds a lone surrogate, and it names a Redis key")
    return text


def _reason(text: str) -> str:
    if not _REASON.fullmatch(text):
        raise PydanticCustomError("reason", "is not a reason (lower case letters, digits, _)")
    return text


_Time = Annotated[float, Field(ge=0, le=MAX_TIME)]
"""A time of death, which the store sets; the times a message carries (first seen, attempts)
are only finite: a producer may send any."""
_Count = Annotated[int, Field(ge=0)]
_Version = Annotated[int, Field(ge=0, le=MAX_VERSION)]


class _Schema(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class _AttemptSchema(_Schema):
    at: float | None = None
    code: str | None = None
    message: str | None = None
    http_status: int | None = None
    request_id: str | None = None
    kind: str | None = None
    charged: bool | None = None
    maybe_applied: bool | None = None


class _CountsSchema(_Schema):
    attempts_made: _Count | None = None
    attempts_used: _Count | None = None
    elided: _Count | None = None
    elided_kinds: dict[str, _Count] | None = None


class _RecordSchema(_Schema):
    """The fields `prepare` writes; those an older version did not write may be missing."""

    id: Annotated[str, _text(), AfterValidator(_key_safe)]
    reason: Annotated[str, AfterValidator(_reason)]
    detail: Annotated[str, _text(most=MAX_DETAIL_CHARS, least=0)]
    call_id: Annotated[str, _text(most=MAX_CALL_ID_LENGTH), AfterValidator(_key_safe)] | None = None
    event_id: Annotated[str, _text(most=MAX_EVENT_ID_LENGTH)] | None = None
    version: _Version | None = None
    source: Annotated[str, _text(most=MAX_SOURCE_LENGTH)] | None = None
    event: Any
    normalized: dict[str, Any] | None = None
    attempts: list[_AttemptSchema]
    attempt_counts: _CountsSchema | None = None
    first_seen: float | None = None
    died_at: _Time
    task_id: str | None = None
    applied_version: _Version | None = None
    queue: str | None = None
    """Not written by the worker (a record may move to another deployment), but a record
    that names a queue or key prefix must name this deployment's."""
    key_prefix: str | None = None


def record_problem(record: Any, rules: RecordRules) -> str | None:
    """Why `record` cannot be stored or replayed here, in one line; None when it can."""
    if not isinstance(record, dict):
        return f"not a JSON object but {_JSON_TYPES.get(type(record), type(record).__name__)}"
    try:
        _RecordSchema.model_validate(record)
    except ValidationError as exc:
        return _one_line(exc)
    for name, ours in (("queue", rules.queue), ("key_prefix", rules.key_prefix)):
        theirs = record.get(name)
        if ours is not None and theirs is not None and theirs != ours:
            return f"{name}: names {theirs[:100]!a}, not this deployment's {ours!r}"
    for name in ("event", "normalized"):
        if problem := _kept_problem(record.get(name), rules.max_raw_bytes):
            return f"{name}: {problem}"
    return None


def _kept_problem(value: Any, limit: int | None) -> str | None:
    """A kept event is JSON within the limit, or what `_bounded` leaves of a bigger one."""
    if _is_bounded_form(value):
        what, size = "its head is", len(_utf8(value["head"]))
    else:
        try:
            what, size = "as JSON it is", len(_utf8(_json(value)))
        except ValueError:
            return "holds NaN or Infinity, which JSON does not allow"
        except RecursionError:
            return "is nested too deeply to write as JSON"
    if limit is not None and size > limit:
        return f"{what} {size} bytes, more than TAGGING_DEAD_LETTER_MAX_RAW_BYTES ({limit})"
    return None


def _is_bounded_form(value: Any) -> bool:
    """What `_bounded` leaves of a value it cannot keep whole."""
    if not (isinstance(value, dict) and value.keys() == {"truncated", "size_bytes", "head"}):
        return False
    size = value["size_bytes"]
    return (
        value["truncated"] is True
        and (size is None or (type(size) is int and size >= 0))
        and isinstance(value["head"], str)
    )


_JSON_TYPES = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}
_SAID = {
    "missing": "is missing",
    "extra_forbidden": "is no field of a dead letter",
    "model_type": "should be an object",
}
"""pydantic's words where they would name our classes or read oddly in a report."""


def _one_line(error: ValidationError) -> str:
    found = []
    for e in error.errors(include_url=False):
        where = ".".join(_loc(part) for part in e["loc"])
        said = _SAID.get(e["type"])
        found.append(f"{where} {said}" if said else f"{where}: {e['msg']}")
    more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
    return "; ".join(found[:3]) + more


def _loc(part: str | int) -> str:
    """A field name from the record itself, made safe for one line of a report."""
    if isinstance(part, int) or re.fullmatch(r"[A-Za-z0-9_]{1,40}", part):
        return str(part)
    return ascii(part[:40])


def export_line(record: dict[str, Any]) -> str:
    """One line of an export; `import_lines` reads it back."""
    return _dumps(record) + "\n"


def import_lines(
    text: str, rules: RecordRules
) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, record, None) for each record of an export, (line number, None, why) for
    each line refused. Lines end at "\n" only: str.splitlines would also cut at U+2028 or
    U+0085, which JSON leaves unescaped inside a record's text (and at U+001C in a hand-made
    line). A line too long for any record is refused before it is parsed: the event and the
    validated event take at most 3 times their limit each once escaped."""
    limit = None if rules.max_raw_bytes is None else 8 * rules.max_raw_bytes + _LINE_SLACK
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip(" \t\r"):
            continue
        size = len(_utf8(line))
        if limit is not None and size > limit:
            yield number, None, f"the line is {size} bytes, more than a record can take ({limit})"
            continue
        record, problem = parse_record(line, rules)
        yield number, record, problem


def parse_record(text: str, rules: RecordRules) -> tuple[dict[str, Any] | None, str | None]:
    """The record in `text`, or why there is none: never an exception."""
    try:
        record = json.loads(text)
    except RecursionError:
        return None, "not JSON we can read (nested too deeply)"
    except ValueError as exc:
        return None, f"not JSON ({exc})"
    problem = record_problem(record, rules)
    return (None, problem) if problem else (record, None)


def damage(record: dict[str, Any]) -> str | None:
    """Why a record read from the store cannot be trusted; None when it is whole."""
    return record.get("damaged")


def unsendable(event: Any) -> str | None:
    """Why `event` cannot be put on the queue: a message is UTF-8 JSON, which a lone surrogate
    in a record's text (kept escaped) cannot be."""
    try:
        text = _json(event)
    except (ValueError, RecursionError):
        return "its event cannot be written as JSON"
    if not SURROGATE.search(text):
        return None
    return "its event holds a lone surrogate, which no message can carry"


class ReplayRefused(Exception):
    """The record stays where it is: it is damaged (or names another queue), or its event
    cannot be sent."""

    def __init__(self, record_id: str, why: str) -> None:
        super().__init__(f"{record_id}: {why}")
        self.record_id = record_id
        self.why = why


@dataclass(frozen=True)
class DeadRecord:
    """A dead letter ready to store, with what the scripts index it by."""

    id: str
    json: str
    reason: str
    call_id: str
    code: str
    died_at_ms: int

    def script_args(self) -> list[str | int]:
        return [self.json, self.reason, self.call_id, self.code, self.died_at_ms]


@dataclass(frozen=True)
class Attempt:
    """One call to the API that did not succeed."""

    at: float
    code: str
    message: str
    http_status: int | None
    request_id: str | None
    kind: str
    charged: bool = True
    """Whether it used one of the event's attempts (throttling and outages do not)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "code": self.code,
            "message": self.message,
            "http_status": self.http_status,
            "request_id": self.request_id,
            "kind": self.kind,
            "charged": self.charged,
        }


class ReplayConflict(Exception):
    """The record changed between reading it and replaying it; nothing was moved."""


class Restored(str, Enum):
    STORED = "stored"
    EXISTS = "exists"
    """A record with that id is here already (and was left alone)."""
    SETTLED = "settled"
    """The event has finished otherwise since the record was written (replayed, applied)."""


class DeadLetterStore:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        max_records: int,
        max_event_bytes: int = 65_536,
        fate_ttl: int = 7 * 86_400,
        version_ttl: int = 7 * 86_400,
        queue: str | None = None,
    ) -> None:
        self._redis = client
        self._keys = keys
        self._max = max_records
        self._max_event_bytes = max_event_bytes
        self._fate_ttl = fate_ttl
        self._version_ttl = version_ttl
        self._queue = queue
        self._add = client.register_script(_ADD)
        self._take = client.register_script(_TAKE)
        self._trim = client.register_script(_TRIM_OLDEST)

    @classmethod
    def from_settings(cls, client: redis.Redis, keys: Keys, settings: Settings) -> DeadLetterStore:
        """The store as the deployment is set up, its queue included: a record that names
        another queue then reads as damaged, not only when a replay refuses it."""
        return cls(
            client,
            keys,
            max_records=settings.dead_letter_max_records,
            max_event_bytes=settings.dead_letter_max_raw_bytes,
            fate_ttl=settings.fate_ttl_seconds,
            version_ttl=settings.version_ttl_seconds,
            queue=settings.queue,
        )

    @property
    def rules(self) -> RecordRules:
        """What a record must be to be stored here; `dead import` holds each line to it."""
        return RecordRules(self._max_event_bytes, self._keys.prefix, self._queue)

    def prepare(
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
        attempt_counts: dict[str, Any] | None = None,
        applied_version: int | None = None,
    ) -> DeadRecord:
        """The record of an event that died, to store with its fate in one step.

        `applied_version` is the call's version when it died: a replay that finds it forgotten
        brings it back, so a replay or an import can never regress the call. `attempts` is
        the kept part of the history (first and latest), `attempt_counts` counts all of it.

        Whatever it is handed (text with lone surrogates, values nested too deep for JSON, a
        huge message), the record passes `record_problem`: what names a Redis key is escaped,
        the detail clipped, the events bounded, and the copies of an invalid event's fields
        kept only when they fit (the event as received still holds them).
        """
        call_id = _field(normalized, event, "call_id")
        record = {
            "id": _key_text(record_id),
            "reason": reason,
            "detail": _clipped(detail, MAX_DETAIL_CHARS),
            "call_id": _fitting(_key_text(call_id), MAX_CALL_ID_LENGTH),
            "event_id": _fitting(_field(normalized, event, "event_id"), MAX_EVENT_ID_LENGTH),
            "version": _version_or_none(_field(normalized, event, "version")),
            "source": _fitting(_field(normalized, event, "source"), MAX_SOURCE_LENGTH),
            "event": self._bounded(event),
            "normalized": None if normalized is None else self._bounded(normalized),
            "attempts": attempts,
            "attempt_counts": attempt_counts,
            "first_seen": first_seen,
            "died_at": time.time(),
            "task_id": task_id,
            "applied_version": applied_version,
        }
        return _dead_record(record)

    @staticmethod
    def record_keys(keys: Keys, record: DeadRecord) -> list[str]:
        """The keys a script that stores `record` touches, in the order `STORE_RECORD`'s
        callers pass them: by call, all, the record, by reason, by code."""
        return [
            keys.dead_by_call(record.call_id),
            keys.dead_all,
            keys.dead_record(record.id),
            keys.dead_by_reason(record.reason),
            keys.dead_by_code(record.code),
        ]

    def trim(self) -> int:
        """Drop the oldest records beyond the retention limit; returns how many."""
        return int(self._trim(keys=[self._keys.dead_all], args=[self._max, self._keys.prefix]))

    def add(self, **fields: Any) -> int:
        """Store a record outside an event's processing (its fate becomes dead if it had none);
        `fields` as for `prepare`. Returns how many old records were trimmed."""
        return self._store(json.loads(self.prepare(**fields).json), keep_existing=False)

    def restore(self, record: dict[str, Any], *, replace: bool) -> Restored:
        """Store an exported record as it was (its id and time of death kept). Without
        `replace`, an id already here is left alone. A record whose event has finished
        otherwise since (it was replayed and applied) is not restored. The record is not held
        to the schema here (`dead import` refuses what `import_lines` refuses); one that breaks
        it reads as damaged."""
        if not isinstance(record.get("id"), str) or not isinstance(record.get("reason"), str):
            raise ValueError("a dead-letter record needs a string id and reason")
        answer = self._store(record, keep_existing=not replace)
        return {-1: Restored.EXISTS, -2: Restored.SETTLED}.get(answer, Restored.STORED)

    def _store(self, record: dict[str, Any], *, keep_existing: bool) -> int:
        k = self._keys
        call_id = record.get("call_id")
        known = isinstance(call_id, str)
        return int(
            self._add(
                keys=[
                    k.dead_all,
                    k.dead_record(record["id"]),
                    k.fate(record["id"]),
                    k.outcomes,
                    k.applied(call_id) if known else k.applied(""),
                    k.tags(call_id) if known else k.tags(""),
                ],
                args=[
                    record["id"],
                    _dumps(record),
                    record["reason"],
                    str(call_id),
                    last_code(record) or "",
                    int(float(record.get("died_at") or time.time()) * 1000),
                    self._max,
                    k.prefix,
                    "1" if keep_existing else "",
                    self._fate_ttl,
                ],
            )
        )

    def _bounded(self, event: Any) -> Any:
        """A huge message is kept as its first bytes, so one bad producer cannot fill Redis;
        one that JSON cannot hold (NaN, nested deeper than the encoder goes) as nothing
        (`size_bytes` None), so the record itself can always be written."""
        try:
            text = _utf8(_json(event))
        except (ValueError, RecursionError):
            return {"truncated": True, "size_bytes": None, "head": ""}
        if len(text) <= self._max_event_bytes:
            return event
        head = text[: self._max_event_bytes].decode("utf-8", "ignore")
        return {"truncated": True, "size_bytes": len(text), "head": head}

    def get(self, record_id: str) -> dict[str, Any] | None:
        """The record, or a damaged stand-in for one that breaks the schema (see `_read`)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hmget(self._keys.dead_record(record_id), "json", "reason", "call_id")
        pipe.zscore(self._keys.dead_all, record_id)
        fields, score = pipe.execute()
        return self._read(record_id, fields, score)

    def count(self, where: DeadFilter | None = None) -> int:
        """Exact: by one index when the filter is one indexed field, else by walking."""
        where = where or DeadFilter()
        index, rest = self._plan(where)
        if rest.empty and where.since is None and where.until is None:
            return int(self._redis.zcard(index))
        return sum(1 for _ in self.iter_ids(where, cutoff_ms=None))

    def count_by_reason(self) -> dict[str, int]:
        return self._count_by(self._keys.dead_by_reason(""))

    def count_by_code(self) -> dict[str, int]:
        return self._count_by(self._keys.dead_by_code(""))

    def _count_by(self, prefix: str) -> dict[str, int]:
        counts = {
            key.decode().removeprefix(prefix): int(self._redis.zcard(key))
            for key in self._redis.scan_iter(f"{prefix}*", count=1000)
        }
        return {name: n for name, n in sorted(counts.items()) if n}

    def list(
        self, where: DeadFilter | None = None, *, limit: int = 50, offset: int = 0
    ) -> list[dict[str, Any]]:
        """Newest first, `offset` matching records skipped."""
        where = where or DeadFilter()
        index, rest = self._plan(where)
        low, high = _score_range(where)
        records: list[dict[str, Any]] = []
        skipped = read = 0
        while len(records) < limit:
            ids = self._redis.zrevrangebyscore(index, high, low, start=read, num=500)
            if not ids:
                break
            read += len(ids)
            for record in self._fetch(ids):
                if not rest.matches(record):
                    continue
                if skipped < offset:
                    skipped += 1
                    continue
                records.append(record)
        return records[:limit]

    def iter_records(self, where: DeadFilter | None = None) -> Iterator[dict[str, Any]]:
        """Oldest first, every matching record (for export)."""
        where = where or DeadFilter()
        index, rest = self._plan(where)
        low, high = _score_range(where)
        read = 0
        while ids := self._redis.zrangebyscore(index, low, high, start=read, num=500):
            read += len(ids)
            yield from (r for r in self._fetch(ids) if rest.matches(r))

    def iter_ids(
        self, where: DeadFilter | None = None, *, cutoff_ms: int | None = -1
    ) -> Iterator[str]:
        """Oldest first, in pages, for bulk actions that remove what they are given.

        Only records that died before the walk began are visited (`cutoff_ms=-1`: now), so a
        replayed event that dies again is not met twice; records the caller leaves in place
        are stepped over.
        """
        where = where or DeadFilter()
        index, rest = self._plan(where)
        low, high = _score_range(where)
        if cutoff_ms is not None:
            cutoff = int(time.time() * 1000) if cutoff_ms == -1 else cutoff_ms
            high = cutoff if high == "+inf" else min(int(high.lstrip("(")), cutoff)
        kept = 0
        while True:
            ids = self._redis.zrangebyscore(index, low, high, start=kept, num=500)
            if not ids:
                return
            if rest.empty:
                wanted = [raw.decode() for raw in ids]
            else:
                wanted = [r["id"] for r in self._fetch(ids) if rest.matches(r)]
                kept += len(ids) - len(wanted)
            for record_id in wanted:
                yield record_id
                if self._redis.zscore(index, record_id) is not None:
                    kept += 1

    def _plan(self, where: DeadFilter) -> tuple[str, DeadFilter]:
        """The most selective index for the filter, and what is left to check per record."""
        k = self._keys
        if where.call_id is not None:
            return k.dead_by_call(where.call_id), replace(
                where, call_id=None, since=None, until=None
            )
        if where.code is not None:
            return k.dead_by_code(where.code), replace(where, code=None, since=None, until=None)
        if where.reason is not None:
            return k.dead_by_reason(where.reason), replace(
                where, reason=None, since=None, until=None
            )
        return k.dead_all, replace(where, since=None, until=None)

    def delete(self, record_id: str) -> bool:
        """Forget a record; the event's fate stays `dead` in the ledger."""
        raw = self._redis.hget(self._keys.dead_record(record_id), "call_id")
        call_id = raw.decode() if raw is not None else None
        return self._take_record(record_id, call_id) == 1

    def replay(
        self,
        record_id: str,
        *,
        queue: str,
        build_message: Callable[[Any], str],
        revise: Callable[[dict[str, Any]], Any] | None = None,
    ) -> bool:
        """Move one record back onto the queue in one step; False if it is no longer here.

        `revise(record)` gives the event to send (default: `replay_event`), for an operator's
        fix or a forced version; the record must not change in between (ReplayConflict). A
        damaged record, one that names another queue or one whose event cannot be sent stays
        (ReplayRefused).
        """
        raw = self._redis.hget(self._keys.dead_record(record_id), "json")
        if raw is None:
            return False
        record, damaged = self._check(record_id, raw, replace(self._reading, queue=queue))
        if record is None:
            raise ReplayRefused(record_id, f"damaged: {damaged}")
        event = (revise or replay_event)(record)
        if why := unsendable(event):
            raise ReplayRefused(record_id, why)
        fields = event if isinstance(event, dict) else {}
        event_id = str(fields.get("event_id") or record_id)
        call_id = record.get("call_id") if isinstance(record.get("call_id"), str) else None
        registered = "version" in fields and isinstance(fields.get("call_id"), str)
        floor = record.get("applied_version")
        message = build_message(event)
        moved = self._take_record(
            record_id,
            call_id,
            queue=queue,
            message=message,
            expected=raw.decode(),
            event_id=event_id,
            version=fields.get("version", 0) if registered else 0,
            floor=floor if isinstance(floor, int) else "",
            pending=self._keys.pending(fields["call_id"]) if registered else "",
        )
        if moved == -1:
            raise ReplayConflict(record_id)
        return moved == 1

    def _take_record(
        self,
        record_id: str,
        call_id: str | None,
        *,
        queue: str = "",
        message: str = "",
        expected: str = "",
        event_id: str = "",
        version: int = 0,
        floor: int | str = "",
        pending: str = "",
    ) -> int:
        """Remove the record; with a `queue`, also put `message` on it (see `_TAKE`)."""
        k = self._keys
        return int(
            self._take(
                keys=[
                    k.dead_all,
                    k.dead_record(record_id),
                    k.fate(event_id or record_id),
                    k.outcomes,
                    pending,
                    k.applied(call_id) if call_id is not None else "",
                    k.tags(call_id) if call_id is not None else "",
                    k.dead_by_call(call_id) if call_id is not None else "",
                ],
                args=[
                    record_id,
                    k.prefix,
                    queue,
                    message,
                    expected,
                    event_id,
                    version,
                    floor,
                    self._version_ttl,
                ],
            )
        )

    def _fetch(self, ids: list[bytes]) -> Iterator[dict[str, Any]]:
        pipe = self._redis.pipeline(transaction=False)
        for raw_id in ids:
            pipe.hmget(self._keys.dead_record(raw_id.decode()), "json", "reason", "call_id")
            pipe.zscore(self._keys.dead_all, raw_id)
        answers = pipe.execute()
        for raw_id, fields, score in zip(ids, answers[::2], answers[1::2], strict=True):
            record = self._read(raw_id.decode(), fields, score)
            if record is not None:
                yield record

    @property
    def _reading(self) -> RecordRules:
        return replace(self.rules, max_raw_bytes=None)

    def _read(
        self, record_id: str, fields: list[bytes | None], score: float | None
    ) -> dict[str, Any] | None:
        """A stored record, or for one that breaks the schema a stand-in built from what the
        indexes know (they are written by the scripts, never from the JSON), so one bad
        record shows as damaged instead of failing every listing it is in."""
        raw, reason, call_id = fields
        if raw is None:
            return None
        record, why = self._check(record_id, raw, self._reading)
        if record is not None:
            return record
        died = score / 1000 if score is not None and 0 <= score / 1000 <= MAX_TIME else None
        return {
            "id": record_id,
            "damaged": why,
            "reason": reason.decode("utf-8", "backslashreplace") if reason else None,
            "call_id": call_id.decode("utf-8", "backslashreplace") if call_id else None,
            "died_at": died,
        }

    @staticmethod
    def _check(
        record_id: str, raw: bytes, rules: RecordRules
    ) -> tuple[dict[str, Any] | None, str | None]:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, f"not UTF-8 (byte {exc.start})"
        record, why = parse_record(text, rules)
        if record is not None and record["id"] != record_id:
            return None, f"its id is {record['id'][:100]!a}, but it is kept as {record_id!r}"
        return record, why


def _dead_record(record: dict[str, Any]) -> DeadRecord:
    return DeadRecord(
        id=record["id"],
        json=_dumps(record),
        reason=record["reason"],
        call_id=str(record.get("call_id")),
        code=last_code(record) or "",
        died_at_ms=int(float(record["died_at"]) * 1000),
    )


def replay_event(record: dict[str, Any]) -> Any:
    """What a replay puts back: the validated event (its version fixed) or, if it never
    validated, the event as received, so an operator's fix can be replayed as it is."""
    return record["normalized"] if record.get("normalized") is not None else record["event"]


def _field(normalized: dict[str, Any] | None, event: Any, name: str) -> Any:
    if normalized is not None:
        return normalized.get(name)
    return event.get(name) if isinstance(event, dict) else None


def _fitting(value: Any, limit: int) -> str | None:
    return value if isinstance(value, str) and 0 < len(value) <= limit else None


def _version_or_none(value: Any) -> int | None:
    fits = type(value) is int and 0 <= value <= MAX_VERSION
    return value if fits else None


def _key_text(value: Any) -> Any:
    """Text that names a Redis key, with lone surrogates (which UTF-8 cannot carry) escaped."""
    if isinstance(value, str) and SURROGATE.search(value):
        return value.encode("utf-8", "backslashreplace").decode()
    return value


def _clipped(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    marker = f"...[{len(text)} characters in all]"
    return text[: limit - len(marker)] + marker


def _json(value: Any) -> str:
    """The JSON a record is measured in; raises for what JSON cannot hold (NaN, too deep)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, default=repr)


def _dumps(record: Any) -> str:
    """A record as stored and exported: non-ASCII text as it is, unless the record holds a
    lone surrogate, which only a JSON escape can carry (UTF-8 cannot)."""
    text = _json(record)
    if not SURROGATE.search(text):
        return text
    return json.dumps(record, allow_nan=False, default=repr)


def _utf8(text: str) -> bytes:
    """UTF-8 for measuring and cutting, a lone surrogate as its escape."""
    return text.encode("utf-8", "backslashreplace")


def _score_range(where: DeadFilter) -> tuple[str | int, str | int]:
    """Scores are times of death in ms; `until` is exclusive."""
    low: str | int = int(where.since * 1000) if where.since is not None else "-inf"
    high: str | int = f"({int(where.until * 1000)}" if where.until is not None else "+inf"
    return low, high
