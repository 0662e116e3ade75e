"""Tag-update events: validation and the encoding the API expects (pure, no I/O).

Everything a producer can get wrong is caught here with a reason that names the field, so a
bad event is dead-lettered with an answer instead of reaching the API. That includes text
that is not valid Unicode (lone surrogates, which JSON's `"\\ud800"` decodes to): it cannot be
encoded as UTF-8, so it could be neither queued, nor dead-lettered, nor sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tagging_worker import plain_json
from tagging_worker.errors import InvalidEvent
from tagging_worker.plain_json import LONE_SURROGATE, SURROGATE

MAX_VERSION = 2**53 - 1  # sorted-set scores and Lua numbers are doubles: exact up to here
MAX_EVENT_ID_LENGTH = 128
MAX_CALL_ID_LENGTH = 4096
"""The longest call id any deployment can be set to accept (TAGGING_MAX_CALL_ID_LENGTH)."""
MAX_SOURCE_LENGTH = 128
MAX_EXTRA_DEPTH = 16
"""Arrays and objects an extra field may nest: deeper is no record a producer means to keep."""
KNOWN_FIELDS = ("call_id", "tags", "version", "event_id", "occurred_at", "source")


@dataclass(frozen=True)
class EventLimits:
    max_call_id_length: int = 128
    max_tags: int = 100
    max_tag_length: int = 64


@dataclass(frozen=True)
class TagUpdate:
    call_id: str
    tags: tuple[str, ...]
    version: int
    event_id: str
    occurred_at: str | None = None
    source: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tags_json(self) -> str:
        return encode_tags(self.tags)

    def as_event(self) -> dict[str, Any]:
        """The normalized event, so a retried or replayed event describes itself fully."""
        event: dict[str, Any] = dict(self.extra)
        event.update(
            call_id=self.call_id,
            tags=list(self.tags),
            version=self.version,
            event_id=self.event_id,
        )
        if self.occurred_at is not None:
            event["occurred_at"] = self.occurred_at
        if self.source is not None:
            event["source"] = self.source
        return event


UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""Control characters (category Cc), line and paragraph separators, and surrogates (Cs): what
no field may hold and no terminal line should get. One C-speed scan finds all of them."""


def encode_tags(tags: Sequence[str]) -> str:
    """What the API's `Tags` parameter takes: compact JSON, non-ASCII kept as it is."""
    return json.dumps(list(tags), ensure_ascii=False, separators=(",", ":"))


def validate_event(
    raw: object, *, limits: EventLimits, default_version: int, default_event_id: str
) -> TagUpdate:
    event = require_object(raw)
    return TagUpdate(
        call_id=_call_id(event.get("call_id"), limits),
        tags=_tags(event, limits),
        version=_version(event.get("version"), default_version),
        event_id=_optional_text(event, "event_id", MAX_EVENT_ID_LENGTH) or default_event_id,
        occurred_at=_occurred_at(event.get("occurred_at")),
        source=_optional_text(event, "source", MAX_SOURCE_LENGTH),
        extra=_extra(event),
    )


def require_object(raw: object) -> Mapping[Any, Any]:
    """Nothing else about an event can be checked, or defaulted, until it is an object."""
    if not isinstance(raw, Mapping):
        raise InvalidEvent(f"event must be a JSON object, got {_type(raw)}")
    return raw


def _call_id(value: object, limits: EventLimits) -> str:
    if value is None:
        raise InvalidEvent("call_id is missing")
    if not isinstance(value, str):
        raise InvalidEvent(f"call_id must be a string, got {_type(value)}")
    if not value:
        raise InvalidEvent("call_id is empty")
    if len(value) > limits.max_call_id_length:
        raise InvalidEvent(
            f"call_id is {len(value)} characters, more than {limits.max_call_id_length}"
        )
    _check_text("call_id", value)
    if value != value.strip():
        raise InvalidEvent("call_id has leading or trailing whitespace")
    return value


def _tags(raw: Mapping[str, Any], limits: EventLimits) -> tuple[str, ...]:
    if "tags" not in raw or raw["tags"] is None:
        raise InvalidEvent("tags is missing")
    value = raw["tags"]
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidEvent(f"tags is a string but not JSON ({exc.msg})") from None
        except RecursionError:
            raise InvalidEvent("tags is a JSON string nested too deeply to read") from None
        if not isinstance(value, list):
            raise InvalidEvent(f"tags is a JSON string holding {_type(value)}, not an array")
    if not isinstance(value, list):
        raise InvalidEvent(f"tags must be a list of strings, got {_type(value)}")
    unique: dict[str, None] = {}
    for index, tag in enumerate(value):
        unique.setdefault(_tag(index, tag, limits), None)
    if len(unique) > limits.max_tags:
        raise InvalidEvent(f"tags has {len(unique)} distinct tags, more than {limits.max_tags}")
    return tuple(unique)


def _tag(index: int, tag: object, limits: EventLimits) -> str:
    if not isinstance(tag, str):
        raise InvalidEvent(f"tags[{index}] must be a string, got {_type(tag)}")
    trimmed = tag.strip()
    if not trimmed:
        raise InvalidEvent(f"tags[{index}] is empty")
    _check_text(f"tags[{index}]", trimmed)
    if len(trimmed) > limits.max_tag_length:
        raise InvalidEvent(
            f"tags[{index}] is {len(trimmed)} characters, more than {limits.max_tag_length}"
        )
    return trimmed


def _version(value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidEvent(f"version must be an integer, got {_type(value)}")
    if value < 0:
        raise InvalidEvent(f"version must be >= 0, got {value}")
    if value > MAX_VERSION:
        raise InvalidEvent(f"version must be at most {MAX_VERSION}")
    return value


def _optional_text(raw: Mapping[str, Any], name: str, max_length: int) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"{name} must be a string, got {_type(value)}")
    if not value:
        raise InvalidEvent(f"{name} is empty")
    if len(value) > max_length:
        raise InvalidEvent(f"{name} is {len(value)} characters, more than {max_length}")
    _check_text(name, value)
    return value


def _occurred_at(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"occurred_at must be an ISO-8601 string, got {_type(value)}")
    if SURROGATE.search(value):
        raise InvalidEvent(f"occurred_at {LONE_SURROGATE}")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"occurred_at is not ISO-8601: {value[:40]!r}") from None
    return value


def _check_text(name: str, text: str) -> None:
    found = UNPRINTABLE.search(text)
    if found is None:
        return
    if SURROGATE.match(found.group()):
        raise InvalidEvent(f"{name} {LONE_SURROGATE}")
    raise InvalidEvent(f"{name} contains control characters")


def _extra(raw: Mapping[Any, Any]) -> dict[str, Any]:
    """Unknown fields travel with the event through Redis, retries and dead letters as UTF-8
    JSON, so they must be JSON values with valid text, within MAX_EXTRA_DEPTH."""
    extra = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS}
    if (problem := plain_json.problem(extra, max_depth=MAX_EXTRA_DEPTH)) is not None:
        raise InvalidEvent(f"extra field {problem}")
    return extra


def _type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)
