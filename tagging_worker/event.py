"""Tag-update events: validation and the encoding the API expects (pure, no I/O).

Everything a producer can get wrong is caught here with a reason that names the field, so a
bad event is dead-lettered with an answer instead of reaching the API.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MAX_VERSION = 2**53 - 1  # sorted-set scores and Lua numbers are doubles: exact up to here
MAX_EVENT_ID_LENGTH = 128
MAX_CALL_ID_LENGTH = 4096
"""The longest call id any deployment can be set to accept (TAGGING_MAX_CALL_ID_LENGTH)."""
MAX_SOURCE_LENGTH = 128
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


class InvalidEvent(ValueError):
    """The event cannot be applied; the message names the field and the problem."""


def encode_tags(tags: Sequence[str]) -> str:
    """What the API's `Tags` parameter takes: compact JSON, non-ASCII kept as it is."""
    return json.dumps(list(tags), ensure_ascii=False, separators=(",", ":"))


def validate_event(
    raw: object, *, limits: EventLimits, default_version: int, default_event_id: str
) -> TagUpdate:
    if not isinstance(raw, Mapping):
        raise InvalidEvent(f"event must be a JSON object, got {_type(raw)}")
    extra = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS}
    return TagUpdate(
        call_id=_call_id(raw.get("call_id"), limits),
        tags=_tags(raw, limits),
        version=_version(raw.get("version"), default_version),
        event_id=_optional_text(raw, "event_id", MAX_EVENT_ID_LENGTH) or default_event_id,
        occurred_at=_occurred_at(raw.get("occurred_at")),
        source=_optional_text(raw, "source", MAX_SOURCE_LENGTH),
        extra=extra,
    )


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
    if _has_control(value):
        raise InvalidEvent("call_id contains control characters")
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
    if _has_control(trimmed):
        raise InvalidEvent(f"tags[{index}] contains control characters")
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
    if _has_control(value):
        raise InvalidEvent(f"{name} contains control characters")
    return value


def _occurred_at(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"occurred_at must be an ISO-8601 string, got {_type(value)}")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        raise InvalidEvent(f"occurred_at is not ISO-8601: {value[:40]!r}") from None
    return value


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029" for ch in text)


def _type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)
