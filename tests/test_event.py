"""Event validation: every bad event gets a reason that names the problem; good edge cases pass."""

from __future__ import annotations

from typing import Any

import pytest

from tagging_worker.event import EventLimits, InvalidEvent, TagUpdate, encode_tags, validate_event

LIMITS = EventLimits(max_call_id_length=32, max_tags=3, max_tag_length=8)


def _validate(raw: Any) -> TagUpdate:
    return validate_event(raw, limits=LIMITS, default_version=1000, default_event_id="ev-default")


def _event(**fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"call_id": "call-1", "tags": ["a"]}
    event.update(fields)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()

BAD_EVENTS = [
    ("not an object: list", ["call-1", ["a"]], "must be a JSON object, got array"),
    ("not an object: string", "call-1", "must be a JSON object, got string"),
    ("not an object: null", None, "must be a JSON object, got null"),
    ("call_id missing", _event(call_id=_DROP), "call_id is missing"),
    ("call_id null", _event(call_id=None), "call_id is missing"),
    ("call_id empty", _event(call_id=""), "call_id is empty"),
    ("call_id a number", _event(call_id=123), "call_id must be a string, got int"),
    ("call_id oversized", _event(call_id="c" * 33), "call_id is 33 characters, more than 32"),
    ("call_id newline", _event(call_id="call\n1"), "call_id contains control characters"),
    ("call_id NUL", _event(call_id="call\x001"), "call_id contains control characters"),
    ("call_id DEL", _event(call_id="call\x7f"), "call_id contains control characters"),
    ("call_id line separator", _event(call_id="call\u2028"), "call_id contains control"),
    ("call_id leading space", _event(call_id=" call-1"), "call_id has leading or trailing"),
    ("tags missing", _event(tags=_DROP), "tags is missing"),
    ("tags null", _event(tags=None), "tags is missing"),
    ("tags an object", _event(tags={"a": 1}), "tags must be a list of strings, got object"),
    ("tags a number", _event(tags=5), "tags must be a list of strings, got int"),
    ("tags a non-JSON string", _event(tags="a,b"), "tags is a string but not JSON"),
    ("tags JSON of an object", _event(tags='{"a": 1}'), "JSON string holding object"),
    ("tags JSON of a string", _event(tags='"a"'), "JSON string holding string"),
    ("nested list", _event(tags=["a", ["b"]]), "tags[1] must be a string, got array"),
    ("number among tags", _event(tags=["a", 5]), "tags[1] must be a string, got int"),
    ("null among tags", _event(tags=[None]), "tags[0] must be a string, got null"),
    ("bool among tags", _event(tags=[True]), "tags[0] must be a string, got boolean"),
    ("object among tags", _event(tags=[{"a": 1}]), "tags[0] must be a string, got object"),
    ("number in JSON tags", _event(tags="[1]"), "tags[0] must be a string, got int"),
    ("empty tag", _event(tags=["a", ""]), "tags[1] is empty"),
    ("whitespace-only tag", _event(tags=["  "]), "tags[0] is empty"),
    ("oversized tag", _event(tags=["123456789"]), "tags[0] is 9 characters, more than 8"),
    ("control char in tag", _event(tags=["a\tb"]), "tags[0] contains control characters"),
    ("too many tags", _event(tags=["a", "b", "c", "d"]), "4 distinct tags, more than 3"),
    ("negative version", _event(version=-1), "version must be >= 0, got -1"),
    ("float version", _event(version=3.0), "version must be an integer, got float"),
    ("string version", _event(version="3"), "version must be an integer, got string"),
    ("bool version", _event(version=True), "version must be an integer, got boolean"),
    ("version too large", _event(version=2**63), "version must be at most"),
    ("version past 2**53", _event(version=2**53), "version must be at most"),
    ("empty event_id", _event(event_id=""), "event_id is empty"),
    ("numeric event_id", _event(event_id=5), "event_id must be a string, got int"),
    ("source not a string", _event(source=["crm"]), "source must be a string, got array"),
    ("occurred_at not ISO", _event(occurred_at="yesterday"), "occurred_at is not ISO-8601"),
    ("occurred_at a number", _event(occurred_at=1700000000), "occurred_at must be an ISO-8601"),
]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(raw, why) for _, raw, why in BAD_EVENTS],
    ids=[name for name, _, _ in BAD_EVENTS],
)
def test_bad_event_is_rejected_with_a_reason_naming_the_problem(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        _validate(raw)
    assert reason in str(caught.value)


def test_chinese_tags_are_kept_and_encoded_compactly_without_escapes() -> None:
    update = _validate(_event(tags=["有意向", "需跟进"]))

    assert update.tags == ("有意向", "需跟进")
    assert update.tags_json == '["有意向","需跟进"]'


@pytest.mark.parametrize("tags", [[], "[]"])
def test_empty_tag_list_is_accepted_and_clears_all_tags(tags: Any) -> None:
    assert _validate(_event(tags=tags)).tags_json == "[]"


def test_tags_as_a_json_string_are_accepted() -> None:
    assert _validate(_event(tags='["a", "b"]')).tags == ("a", "b")


def test_tags_are_trimmed_and_duplicates_dropped_keeping_first_order() -> None:
    assert _validate(_event(tags=[" b", "a ", "b", "a", "c"])).tags == ("b", "a", "c")


def test_duplicates_do_not_count_against_the_tag_limit() -> None:
    assert _validate(_event(tags=["a", "b", "c", "a", "b"])).tags == ("a", "b", "c")


def test_defaults_apply_when_version_and_event_id_are_absent() -> None:
    update = _validate(_event())

    assert (update.version, update.event_id) == (1000, "ev-default")


def test_version_zero_and_explicit_fields_are_kept() -> None:
    update = _validate(
        _event(version=0, event_id="e-1", source="crm", occurred_at="2026-11-24T10:00:00Z")
    )

    assert (update.version, update.event_id, update.source) == (0, "e-1", "crm")
    assert update.occurred_at == "2026-11-24T10:00:00Z"


def test_unknown_fields_are_kept_and_survive_a_round_trip() -> None:
    update = _validate(_event(crm_row=42, tenant="acme", version=5))

    assert update.extra == {"crm_row": 42, "tenant": "acme"}
    event = update.as_event()
    assert event["crm_row"] == 42 and event["tags"] == ["a"]
    assert _validate(event) == update


def test_encode_tags_is_compact_json() -> None:
    assert encode_tags(["a b", "ü"]) == '["a b","ü"]'
