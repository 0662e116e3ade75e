"""Event validation: every bad event gets a reason that names the problem; good edge cases pass."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_worker.errors import InvalidEvent
from tagging_worker.event import (
    MAX_EXTRA_DEPTH,
    EventLimits,
    TagUpdate,
    encode_tags,
    validate_event,
)

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
    ("tags a string 100,000 deep", _event(tags="[" * 100_000), "JSON string nested too deeply"),
]

LONE = "contains a lone surrogate (not valid Unicode text)"
UNENCODABLE_EVENTS = [
    ("call_id", _event(call_id="call-\ud800"), f"call_id {LONE}"),
    ("call_id from undecodable argv", _event(call_id="call-\udcff"), f"call_id {LONE}"),
    ("tag", _event(tags=["a", "b", "\udfff"]), f"tags[2] {LONE}"),
    ("tag in a JSON string", _event(tags='["a", "\\ud800"]'), f"tags[1] {LONE}"),
    ("event_id", _event(event_id="ev-\ud800"), f"event_id {LONE}"),
    ("occurred_at", _event(occurred_at="2026-11-24T10:00:00\ud800"), f"occurred_at {LONE}"),
    ("source", _event(source="crm\udbff"), f"source {LONE}"),
    ("extra value", _event(note="hi \ud800"), f"extra field 'note' {LONE}"),
    ("nested extra value", _event(crm={"note": ["ok", "x\udc80"]}), f"'crm.note[1]' {LONE}"),
    ("extra key", {**_event(), "\ud801": 1}, f"extra field name '\\ud801' {LONE}"),
    ("nested extra key", _event(crm={"k\ud800": 1}), f"extra field name 'crm.k\\ud800' {LONE}"),
]

UNSERIALIZABLE_EVENTS = [
    ("set", _event(crm={"ids": {1, 2}}), "extra field 'crm.ids' is set, not a JSON value"),
    ("bytes", _event(blob=b"x"), "extra field 'blob' is bytes, not a JSON value"),
    ("tuple", _event(pair=(1, 2)), "extra field 'pair' is tuple, not a JSON value"),
    ("datetime", _event(at=datetime(2026, 1, 1)), "'at' is datetime, not a JSON value"),
    ("NaN", _event(score=math.nan), "extra field 'score' is nan, not a JSON number"),
    ("infinity", _event(crm=[-math.inf]), "extra field 'crm[0]' is -inf, not a JSON number"),
    ("object", _event(x=object()), "extra field 'x' is object, not a JSON value"),
    ("int key", _event(crm={1: "a"}), "extra field 'crm' has a key that is int, not a string"),
    ("top-level int key", {**_event(), 7: "a"}, "extra field name 7 is int, not a string"),
    ("too deep", _event(crm=json.loads("[" * 17 + "]" * 17)), "nests deeper than 16 levels"),
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


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(raw, why) for _, raw, why in UNENCODABLE_EVENTS],
    ids=[name for name, _, _ in UNENCODABLE_EVENTS],
)
def test_text_that_is_not_valid_unicode_is_refused_naming_the_field(raw: Any, reason: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        _validate(raw)
    assert reason in str(caught.value)
    str(caught.value).encode("utf-8")  # the reason itself can be printed and stored


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(raw, why) for _, raw, why in UNSERIALIZABLE_EVENTS],
    ids=[name for name, _, _ in UNSERIALIZABLE_EVENTS],
)
def test_extra_fields_that_are_not_bounded_json_are_refused_naming_the_field(
    raw: Any, reason: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        _validate(raw)
    assert reason in str(caught.value)


def test_extra_fields_nested_10000_deep_are_refused_without_recursing() -> None:
    deep: list[Any] = []
    for _ in range(10_000):
        deep = [deep]
    with pytest.raises(InvalidEvent, match=f"nests deeper than {MAX_EXTRA_DEPTH} levels"):
        _validate(_event(crm=deep))


def test_an_extra_field_that_contains_itself_is_refused_as_too_deep() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(InvalidEvent, match="nests deeper than"):
        _validate(_event(crm=loop))


def test_extra_fields_at_the_depth_limit_with_any_valid_text_are_kept() -> None:
    deep = json.loads("[" * MAX_EXTRA_DEPTH + '"行\\n\\u0000"' + "]" * MAX_EXTRA_DEPTH)
    update = _validate(_event(crm=deep, 备注={"line\n": "🙂", "n": [1, 2.5, True, None]}))

    assert update.extra == {"crm": deep, "备注": {"line\n": "🙂", "n": [1, 2.5, True, None]}}


def test_a_surrogate_pair_escaped_in_json_is_one_character_and_accepted() -> None:
    update = _validate(json.loads('{"call_id": "c-\\ud83d\\ude00", "tags": ["\\ud83d\\ude00"]}'))

    assert update.call_id == "c-😀" and update.tags == ("😀",)


def test_the_reason_shows_an_unprintable_field_name_escaped_on_one_line() -> None:
    with pytest.raises(InvalidEvent) as caught:
        _validate({**_event(), "bad\nkey": "\ud800"})
    assert str(caught.value) == f"extra field 'bad\\nkey' {LONE}"


def _text() -> st.SearchStrategy[str]:
    """Any code points, lone surrogates made common (the default alphabet leaves them out)."""
    surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
    return st.text(st.characters() | surrogates, max_size=12)


def _json_like() -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | _text()
        | st.sampled_from([b"x", (1,), {1}, object()])
    )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(_text() | st.integers(), inner, max_size=3)
        ),
        max_leaves=10,
    )


@st.composite
def _deep(draw: st.DrawFn) -> Any:
    """A value wrapped in up to 40 arrays or objects: across MAX_EXTRA_DEPTH either way."""
    value = draw(_json_like())
    for wrap in draw(st.lists(st.booleans(), max_size=40)):
        value = [value] if wrap else {"k": value}
    return value


def _raw_events() -> st.SearchStrategy[Any]:
    value = _json_like() | _deep()
    tags = (
        st.lists(_text(), max_size=4)
        | _text()
        | st.builds(json.dumps, st.lists(_text()))
        | st.integers(1, 5000).map(lambda depth: "[" * depth + "]" * depth)
    )
    event = st.fixed_dictionaries(
        {"call_id": _text(), "tags": tags},
        optional={
            "version": st.integers(min_value=-1, max_value=2**54),
            "event_id": _text(),
            "occurred_at": st.sampled_from(["2026-11-24T10:00:00Z", "2026-11-24\ud800"]),
            "source": _text(),
            "crm": value,
            "\ud800": value,
        },
    )
    return event | _json_like()


@settings(deadline=None, max_examples=500)
@given(_raw_events())
def test_validation_only_ever_accepts_or_refuses_and_what_it_accepts_encodes(raw: Any) -> None:
    try:
        update = _validate(raw)
    except InvalidEvent as refused:
        str(refused).encode("utf-8")
        return
    json.dumps(update.as_event(), ensure_ascii=False).encode("utf-8")


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
