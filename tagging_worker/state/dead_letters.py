"""The dead-letter store: events that cannot be applied, kept in Redis until an operator acts.

A record is a hash (`json` holds the whole record; `reason`, `call_id` and the error `code`
are copied out so the Lua scripts can keep the indexes right without decoding JSON). Adding,
removing and replaying each run as one script, so a record is never half-indexed and a replay
is never both on the queue and in the store, nor in neither.

What a record may hold is one schema (`record_problem`): `prepare` only writes records that pass
it, `dead import` refuses lines that do not, and a stored record that does not (written by hand
or by an older version) is read as damaged, shown as such and never replayed.

So nobody probes a record's JSON: `read_record` checks it against the schema once and makes it
a typed `DeadLetter`, whose `as_dict` is the one JSON form (stored, exported, shown); a stored
record that fails is read as a `DamagedRecord`, which holds only what the indexes know.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import redis
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from tagging_worker.errors import ReplayConflict, ReplayRefused
from tagging_worker.event import (
    MAX_CALL_ID_LENGTH,
    MAX_EVENT_ID_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_VERSION,
)
from tagging_worker.plain_json import SURROGATE
from tagging_worker.reasons import DeadReason
from tagging_worker.state import scripts
from tagging_worker.state.dead_filter import DeadFilter
from tagging_worker.state.keys import Keys
from tagging_worker.state.scripts import call_asking

if TYPE_CHECKING:
    from tagging_worker.settings import Settings

MAX_DETAIL_CHARS = 2_000
"""A detail is an error message: longer ones are clipped when a record is made."""
MAX_TIME = 253_402_300_799.0
"""9999-12-31T23:59:59Z, the last second a date can show: later is no time of death."""
_LINE_SLACK = 1 << 20
"""Room in an exported line for everything but the event and the validated event (clipped
attempts, detail and ids take far less)."""
_INDEXED = ("reason", "call_id", "code")
"""The fields of a record's hash that name its indexes (besides all)."""


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
    reason: Annotated[DeadReason, Field(strict=False)]
    """Lax: JSON holds the value, which only lax mode turns into the enum."""
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


def read_record(value: Any, rules: RecordRules) -> DeadLetter | str:
    """The one way a record is read: `value` (decoded JSON) as a typed record, or why it
    cannot be stored or replayed here, in one line."""
    if not isinstance(value, dict):
        return f"not a JSON object but {_JSON_TYPES.get(type(value), type(value).__name__)}"
    try:
        record = _RecordSchema.model_validate(value)
    except ValidationError as exc:
        return _one_line(exc)
    for name, ours, theirs in (
        ("queue", rules.queue, record.queue),
        ("key_prefix", rules.key_prefix, record.key_prefix),
    ):
        if ours is not None and theirs is not None and theirs != ours:
            return f"{name}: names {theirs[:100]!a}, not this deployment's {ours!r}"
    for name, kept in (("event", record.event), ("normalized", record.normalized)):
        if problem := _kept_problem(kept, rules.max_raw_bytes):
            return f"{name}: {problem}"
    return DeadLetter(
        id=record.id,
        reason=record.reason,
        detail=record.detail,
        call_id=record.call_id,
        event_id=record.event_id,
        version=record.version,
        source=record.source,
        event=record.event,
        normalized=record.normalized,
        attempts=tuple(Attempt(**a.model_dump()) for a in record.attempts),
        attempt_counts=(
            None
            if record.attempt_counts is None
            else AttemptCounts(**record.attempt_counts.model_dump())
        ),
        first_seen=record.first_seen,
        died_at=record.died_at,
        task_id=record.task_id,
        applied_version=record.applied_version,
        queue=record.queue,
        key_prefix=record.key_prefix,
    )


def record_problem(value: Any, rules: RecordRules) -> str | None:
    """Why `value` cannot be stored or replayed here, in one line; None when it can."""
    read = read_record(value, rules)
    return read if isinstance(read, str) else None


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
    "enum": "is not one this version knows",
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


def export_line(record: DeadLetter | DamagedRecord) -> str:
    """One line of an export (or of `dead list --jsonl`); `import_lines` reads a whole one back."""
    return _dumps(record.as_dict()) + "\n"


def import_lines(
    text: str, rules: RecordRules
) -> Iterator[tuple[int, DeadLetter | None, str | None]]:
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
        read = parse_record(line, rules)
        yield (number, None, read) if isinstance(read, str) else (number, read, None)


def parse_record(text: str, rules: RecordRules) -> DeadLetter | str:
    """The record in `text`, or why there is none: never an exception."""
    try:
        value = json.loads(text)
    except RecursionError:
        return "not JSON we can read (nested too deeply)"
    except ValueError as exc:
        return f"not JSON ({exc})"
    return read_record(value, rules)


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


@dataclass(frozen=True)
class Attempt:
    """One call to the API that did not succeed. The worker fills every field; a record from an
    older version may lack any (`charged` and `maybe_applied` came later), read as None."""

    at: float | None
    code: str | None
    message: str | None
    http_status: int | None
    request_id: str | None
    kind: str | None
    charged: bool | None
    """Whether it used one of the event's attempts (throttling and outages do not); None
    counts as yes."""
    maybe_applied: bool | None
    """Whether the request may have landed although it failed (a timeout, a lost answer)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttemptCounts:
    """Counts of the whole attempt history, of which a record keeps the first and latest."""

    attempts_made: int | None
    attempts_used: int | None
    elided: int | None
    elided_kinds: dict[str, int] | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DeadLetter:
    """A record that passes the schema, made only by `read_record`. Fields an older version
    did not write read as None, and are written back as null."""

    id: str
    reason: DeadReason
    detail: str
    call_id: str | None
    event_id: str | None
    version: int | None
    source: str | None
    event: Any
    """The event as received: whatever a producer sent, or what `_bounded` leaves of it."""
    normalized: dict[str, Any] | None
    """The validated event (None: it never validated), or what `_bounded` leaves of it."""
    attempts: tuple[Attempt, ...]
    attempt_counts: AttemptCounts | None
    first_seen: float | None
    died_at: float
    task_id: str | None
    applied_version: int | None
    """The call's version when the event died: a replay never sends the call below it."""
    queue: str | None
    key_prefix: str | None
    """Never written by the worker; a record that names them keeps them."""

    @property
    def code(self) -> str | None:
        """The error code it died of: its last attempt's (None: it never reached the API)."""
        return self.attempts[-1].code if self.attempts else None

    @property
    def attempts_made(self) -> int:
        """All attempts the event made, of which only the first and the latest are kept."""
        made = None if self.attempt_counts is None else self.attempt_counts.attempts_made
        return len(self.attempts) if made is None else made

    def replay_event(self) -> Any:
        """What a replay puts back: the validated event (its version fixed) or, if it never
        validated, the event as received, so an operator's fix can be replayed as it is."""
        return self.event if self.normalized is None else self.normalized

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON holds it: stored, exported and shown in this one form."""
        counts = self.attempt_counts
        fields = {
            "id": self.id,
            "reason": self.reason.value,
            "detail": self.detail,
            "call_id": self.call_id,
            "event_id": self.event_id,
            "version": self.version,
            "source": self.source,
            "event": self.event,
            "normalized": self.normalized,
            "attempts": [attempt.as_dict() for attempt in self.attempts],
            "attempt_counts": None if counts is None else counts.as_dict(),
            "first_seen": self.first_seen,
            "died_at": self.died_at,
            "task_id": self.task_id,
            "applied_version": self.applied_version,
        }
        for name, value in (("queue", self.queue), ("key_prefix", self.key_prefix)):
            if value is not None:
                fields[name] = value
        return fields


@dataclass(frozen=True)
class DamagedRecord:
    """A stored record that breaks the schema, as its indexes know it (they are written by the
    scripts, never from the JSON): listed and shown with its problem, never replayed or
    exported."""

    id: str
    problem: str
    reason: str | None
    call_id: str | None
    died_at: float | None
    code: ClassVar[None] = None
    source: ClassVar[None] = None
    """Nothing its JSON says is trusted: a filter on code or source never matches it."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "damaged": self.problem,
            "reason": self.reason,
            "call_id": self.call_id,
            "died_at": self.died_at,
        }


@dataclass(frozen=True)
class DeadRecord:
    """A dead letter ready to store: its JSON, and what the scripts index it by."""

    letter: DeadLetter
    json: str

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadRecord:
        return cls(letter, _dumps(letter.as_dict()))

    @property
    def id(self) -> str:
        return self.letter.id

    @property
    def reason(self) -> str:
        return self.letter.reason.value

    @property
    def call_id(self) -> str:
        """A record of no call is indexed under "None"."""
        return str(self.letter.call_id)

    @property
    def code(self) -> str:
        return self.letter.code or ""

    def script_args(self) -> list[str | int]:
        died_at_ms = int(self.letter.died_at * 1000)
        return [self.json, self.reason, self.call_id, self.code, died_at_ms]


class Restored(str, Enum):
    STORED = "stored"
    EXISTS = "exists"
    """A record with that id is here already (and was left alone)."""
    SETTLED = "settled"
    """The event has finished otherwise since the record was written (replayed, applied)."""


@dataclass(frozen=True)
class _Stored:
    """The reply of `dead_add.lua`."""

    outcome: Restored
    trimmed: int = 0
    """How many old records were dropped to make room (when stored)."""

    @classmethod
    def parse(cls, reply: list[Any]) -> _Stored:
        return cls(Restored(reply[0].decode()), int(reply[1]) if len(reply) > 1 else 0)


class _Taken(str, Enum):
    """The reply of `dead_take.lua`."""

    TAKEN = "taken"
    GONE = "gone"
    """No such record."""
    CHANGED = "changed"
    """The record is not the one read (nothing moved)."""


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
        self._add = scripts.register(client, "dead_add")
        self._take = scripts.register(client, "dead_take")
        self._trim = scripts.register(client, "dead_trim")

    @classmethod
    def from_settings(cls, client: redis.Redis, keys: Keys, settings: Settings) -> DeadLetterStore:
        """The store as the deployment is set up, its queue included: a record that names
        another queue then reads as damaged, not only when a replay refuses it."""
        return cls(
            client,
            keys,
            max_records=settings.dead_letter_max_records,
            max_event_bytes=settings.dead_letter_max_raw_bytes,
            fate_ttl=settings.fate_ttl,
            version_ttl=settings.version_ttl,
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
        reason: DeadReason,
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
        kept only when they fit (the event as received still holds them). So a record it
        cannot read back is a bug here, and raises.
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
        letter = read_record(record, self._reading)
        if isinstance(letter, str):
            raise ValueError(f"prepare made a dead letter its schema refuses: {letter}")
        return DeadRecord.of(letter)

    @staticmethod
    def record_keys(keys: Keys, record: DeadRecord) -> list[str]:
        """The keys storing `record` touches, in the order the scripts that store it with an
        event's fate (`ordering_dead.lua`, `ordering_finish.lua`) take them: by call, all, the
        record, by reason, by code."""
        return [
            keys.dead_by_call(record.call_id),
            keys.dead_all,
            keys.dead_record(record.id),
            keys.dead_by_reason(record.reason),
            keys.dead_by_code(record.code),
        ]

    def trim(self) -> int:
        """Drop the oldest records beyond the retention limit; returns how many."""
        return int(
            call_asking(self._trim, self._keys, fixed_keys=[self._keys.dead_all], args=[self._max])
        )

    def add(self, **fields: Any) -> int:
        """Store a record outside an event's processing (its fate becomes dead if it had none);
        `fields` as for `prepare`. Returns how many old records were trimmed."""
        return self._store(self.prepare(**fields), keep_existing=False).trimmed

    def restore(self, record: DeadLetter, *, replace: bool) -> Restored:
        """Store an exported record as it was (its id and time of death kept). Without
        `replace`, an id already here is left alone. A record whose event has finished
        otherwise since (it was replayed and applied) is not restored."""
        return self._store(DeadRecord.of(record), keep_existing=not replace).outcome

    def _store(self, record: DeadRecord, *, keep_existing: bool) -> _Stored:
        """See `dead_add.lua`; the indexes of a record it replaces are asked for."""
        k = self._keys
        call_id = record.letter.call_id or ""
        reply = call_asking(
            self._add,
            k,
            fixed_keys=[
                k.dead_all,
                k.dead_record(record.id),
                k.fates(record.letter.call_id, record.id),
                k.outcomes,
                k.applied(call_id),
                k.tags(call_id),
                k.dead_by_reason(record.reason),
                k.dead_by_call(record.call_id),
                k.dead_by_code(record.code),
            ],
            args=[
                record.id,
                *record.script_args(),
                self._max,
                "1" if keep_existing else "",
                self._fate_ttl,
            ],
        )
        return _Stored.parse(reply)

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

    def get(self, record_id: str) -> DeadLetter | DamagedRecord | None:
        """The record, or what the indexes know of one that breaks the schema."""
        return next(self._fetch([record_id.encode()]), None)

    def has(self, record_id: str) -> bool:
        return bool(self._redis.exists(self._keys.dead_record(record_id)))

    def ids_starting(self, prefix: str, *, most: int = 2) -> list[str]:
        """Ids that start with `prefix` (a short id, as `dead list` shows it), at most `most`."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        found: list[str] = []
        for member, _ in self._redis.zscan_iter(self._keys.dead_all, match=pattern, count=1000):
            found.append(member.decode("utf-8", "surrogateescape"))
            if len(found) >= most:
                break
        return found

    def short_ids(
        self, ids: Iterable[str], *, least: int = 8, most_read: int = 100_000
    ) -> dict[str, str]:
        """For each id, its shortest start (at least `least` characters) that no other stored
        id shares: what a narrow table can show and `ids_starting` finds again. Finding it
        reads every stored id, so past `most_read` records (a few MB) ids are shown whole."""
        ids = list(ids)
        if self._redis.zcard(self._keys.dead_all) > most_read:
            return {record_id: record_id for record_id in ids}
        every = sorted(
            m.decode("utf-8", "surrogateescape")
            for m in self._redis.zrange(self._keys.dead_all, 0, -1)
        )
        short: dict[str, str] = {}
        for record_id in ids:
            at = bisect.bisect_left(every, record_id)
            neighbours = [every[i] for i in (at - 1, at + 1) if 0 <= i < len(every)]
            shared = max((_common_start(record_id, n) for n in neighbours), default=0)
            short[record_id] = record_id[: max(least, shared + 1)]
        return short

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
    ) -> list[DeadLetter | DamagedRecord]:
        """Newest first, `offset` matching records skipped."""
        where = where or DeadFilter()
        index, rest = self._plan(where)
        low, high = _score_range(where)
        records: list[DeadLetter | DamagedRecord] = []
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

    def iter_records(self, where: DeadFilter | None = None) -> Iterator[DeadLetter | DamagedRecord]:
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
                wanted = [r.id for r in self._fetch(ids) if rest.matches(r)]
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
        indexed = self._redis.hmget(self._keys.dead_record(record_id), *_INDEXED)
        call_id = indexed[1].decode() if indexed[1] is not None else None
        return self._take_record(record_id, call_id, indexed) is _Taken.TAKEN

    def replay(
        self,
        record_id: str,
        *,
        queue: str,
        build_message: Callable[[Any], str],
        revise: Callable[[DeadLetter], Any] | None = None,
    ) -> bool:
        """Move one record back onto the queue in one step; False if it is no longer here.

        `revise(record)` gives the event to send (default: `DeadLetter.replay_event`), for an
        operator's fix or a forced version; the record must not change in between
        (ReplayConflict). A damaged record, one that names another queue or one whose event
        cannot be sent stays (ReplayRefused).
        """
        raw, *indexed = self._redis.hmget(self._keys.dead_record(record_id), "json", *_INDEXED)
        if raw is None:
            return False
        record = self._check(record_id, raw, replace(self._reading, queue=queue))
        if isinstance(record, str):
            raise ReplayRefused(record_id, f"damaged: {record}")
        event = (revise or DeadLetter.replay_event)(record)
        if why := unsendable(event):
            raise ReplayRefused(record_id, why)
        fields = event if isinstance(event, dict) else {}
        event_id = str(fields.get("event_id") or record_id)
        registered = "version" in fields and isinstance(fields.get("call_id"), str)
        floor = record.applied_version
        message = build_message(event)
        taken = self._take_record(
            record_id,
            record.call_id,
            indexed,
            queue=queue,
            message=message,
            expected=raw.decode(),
            event_id=event_id,
            version=fields.get("version", 0) if registered else 0,
            floor="" if floor is None else floor,
            pending=self._keys.pending(fields["call_id"]) if registered else "",
        )
        if taken is _Taken.CHANGED:
            raise ReplayConflict(record_id)
        return taken is _Taken.TAKEN

    def _take_record(
        self,
        record_id: str,
        call_id: str | None,
        indexed: Sequence[bytes | None],
        *,
        queue: str = "",
        message: str = "",
        expected: str = "",
        event_id: str = "",
        version: int = 0,
        floor: int | str = "",
        pending: str = "",
    ) -> _Taken:
        """Remove the record; with a `queue`, also put `message` on it (see `dead_take.lua`).
        `indexed` is what the record's `_INDEXED` fields were when read: their index keys are
        told, and asked for again should the record have changed since."""
        k = self._keys
        told = [
            (kind, name)
            for kind, name in zip(("reason", "call", "code"), indexed, strict=True)
            if name is not None  # a missing field has no index; an empty code's key goes unused
        ]
        reply = call_asking(
            self._take,
            k,
            fixed_keys=[
                k.dead_all,
                k.dead_record(record_id),
                k.fates(call_id, event_id or record_id),
                k.outcomes,
                pending,
                k.applied(call_id) if call_id is not None else "",
                k.tags(call_id) if call_id is not None else "",
                k.dead_by_call(call_id) if call_id is not None else "",
                queue,
            ],
            args=[record_id, message, expected, event_id, version, floor, self._version_ttl],
            told=told,
        )
        return _Taken(reply.decode())

    def _fetch(self, ids: list[bytes]) -> Iterator[DeadLetter | DamagedRecord]:
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
    ) -> DeadLetter | DamagedRecord | None:
        """A stored record, or for one that breaks the schema what the indexes know of it,
        so one bad record shows as damaged instead of failing every listing it is in."""
        raw, reason, call_id = fields
        if raw is None:
            return None
        record = self._check(record_id, raw, self._reading)
        if not isinstance(record, str):
            return record
        died = score / 1000 if score is not None and 0 <= score / 1000 <= MAX_TIME else None
        return DamagedRecord(
            id=record_id,
            problem=record,
            reason=reason.decode("utf-8", "backslashreplace") if reason else None,
            call_id=call_id.decode("utf-8", "backslashreplace") if call_id else None,
            died_at=died,
        )

    @staticmethod
    def _check(record_id: str, raw: bytes, rules: RecordRules) -> DeadLetter | str:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"not UTF-8 (byte {exc.start})"
        record = parse_record(text, rules)
        if not isinstance(record, str) and record.id != record_id:
            return f"its id is {record.id[:100]!a}, but it is kept as {record_id!r}"
        return record


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


def _common_start(a: str, b: str) -> int:
    """How many characters two ids share at their start."""
    pairs = zip(a, b, strict=False)
    return next((i for i, (x, y) in enumerate(pairs) if x != y), min(len(a), len(b)))


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
