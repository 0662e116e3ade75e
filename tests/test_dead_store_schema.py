"""What a dead letter may hold (pure): the one schema `prepare` writes and `dead import` checks."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure
from tagging_worker.errors import InvalidEvent
from tagging_worker.event import EventLimits, validate_event
from tagging_worker.reasons import DeadReason
from tagging_worker.state.dead_letters import (
    DeadLetter,
    DeadLetterStore,
    DeadRecord,
    RecordRules,
    export_line,
    import_lines,
    read_record,
    record_problem,
)
from tagging_worker.state.keys import Keys
from tagging_worker.worker.retry_state import RetryState

MAX_RAW = 1024
RULES = RecordRules(max_raw_bytes=MAX_RAW, key_prefix="here", queue="here-q")


def _store(max_raw: int = MAX_RAW) -> DeadLetterStore:
    """`prepare` needs no Redis: the client is never connected."""
    return DeadLetterStore(redis.Redis(), Keys("here"), max_records=10, max_event_bytes=max_raw)


def _prepared(store: DeadLetterStore | None = None, **fields: Any) -> DeadRecord:
    event = {"call_id": "call-1", "tags": ["a"], "version": 1, "event_id": "e1"}
    given_fields: dict[str, Any] = {
        "record_id": "e1",
        "reason": DeadReason.PERMANENT_ERROR,
        "detail": "InvalidParameter.Tags: no",
        "event": event,
        "normalized": event,
        "attempts": [],
        "first_seen": 1_800_000_000.0,
        "task_id": "t1",
        **fields,
    }
    return (store or _store()).prepare(**given_fields)


GOOD = json.loads(_prepared().json)
"""A record as stored, to break one field at a time."""


def _letter(**change: Any) -> DeadLetter:
    record = read_record({**GOOD, **change}, RULES)
    assert isinstance(record, DeadLetter), record
    return record


def test_a_record_the_worker_wrote_passes() -> None:
    assert record_problem(GOOD, RULES) is None
    assert _letter().as_dict() == GOOD


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"detail": None}, "detail"),
        ({"died_at": math.inf}, "died_at"),
        ({"died_at": math.nan}, "died_at"),
        ({"died_at": "yesterday"}, "died_at"),
        ({"died_at": 1e20}, "died_at"),
        ({"first_seen": -math.inf}, "first_seen"),
        ({"died_at": -1.0}, "died_at"),
        ({"attempts": "abc"}, "attempts"),
        ({"attempts": [1, 2]}, "attempts"),
        ({"attempts": [{"code": 5}]}, "attempts.0.code"),
        ({"attempts": [{"at": math.inf}]}, "attempts.0.at"),
        ({"attempt_counts": {"attempts_made": "3"}}, "attempt_counts"),
        ({"reason": ""}, "reason"),
        ({"reason": "x:dead:all"}, "reason"),
        ({"reason": "operator_fix"}, "reason"),
        ({"reason": "\ud800"}, "reason"),
        ({"id": ""}, "id"),
        ({"id": "\ud800"}, "id"),
        ({"call_id": 5}, "call_id"),
        ({"call_id": "\udc80"}, "call_id"),
        ({"version": True}, "version"),
        ({"normalized": [1]}, "normalized"),
        ({"event": {"blob": "x" * MAX_RAW}}, "event"),
        ({"normalized": {"blob": "x" * MAX_RAW}}, "normalized"),
        ({"detail": "x" * 100_000}, "detail"),
        ({"queue": "someone-elses"}, "queue"),
        ({"key_prefix": "someone-elses"}, "key_prefix"),
        ({"surprise\n\u2028": 1}, "surprise"),
    ],
)
def test_a_record_that_breaks_the_schema_is_refused_naming_the_field(
    change: dict[str, Any], named: str
) -> None:
    record = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    problem = record_problem(record, RULES)
    assert problem is not None and named in problem
    assert "\n" not in problem and "\u2028" not in problem, "one line per refusal"


def test_a_record_that_is_not_an_object_is_refused() -> None:
    assert "object" in (record_problem([GOOD], RULES) or "")


def test_records_naming_this_deployment_or_none_pass() -> None:
    assert record_problem({**GOOD, "queue": "here-q", "key_prefix": "here"}, RULES) is None
    assert record_problem({**GOOD, "queue": "x"}, RecordRules(max_raw_bytes=MAX_RAW)) is None


def test_sizes_are_not_checked_without_a_limit() -> None:
    """Reading what is already stored must not turn records damaged when the limit is lowered."""
    big = {**GOOD, "event": {"blob": "x" * MAX_RAW}}
    assert record_problem(big, RecordRules(max_raw_bytes=None)) is None


def test_prepare_keeps_lone_surrogates_and_unicode_line_breaks_in_what_it_stores() -> None:
    text = "\ud800 \udfff \u2028 \x85 \x1c"
    event = {"call_id": "\ud800", "note": text}
    record = _prepared(event=event, normalized=None, detail=text)
    assert record.letter.event == event and record.letter.detail == text
    assert record_problem(json.loads(record.json), RULES) is None


def test_prepare_bounds_huge_and_deeply_nested_events_without_raising() -> None:
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    huge = {"call_id": "call-1", "blob": "\ud800" * 10 * MAX_RAW}
    for event in (nested, huge, {"x": math.nan}):
        record = _prepared(event=event, normalized=None, detail="x" * 10 * MAX_RAW)
        assert record.letter.event["truncated"] is True
        assert record_problem(json.loads(record.json), RULES) is None


def test_prepare_keeps_only_copies_that_fit_their_fields() -> None:
    raw = {"call_id": 5, "event_id": ["e"], "version": "7", "source": "s" * 200}
    record = _prepared(event=raw, normalized=None).letter
    assert (record.call_id, record.event_id, record.version, record.source) == (
        None,
        None,
        None,
        None,
    )
    assert record.event == raw


def test_a_record_whose_reason_this_version_does_not_know_is_refused_in_one_line() -> None:
    assert record_problem({**GOOD, "reason": "operator_fix"}, RULES) == (
        "reason is not one this version knows"
    )
    assert _letter(reason="expired").reason is DeadReason.EXPIRED


def test_import_lines_split_on_newline_only_and_number_every_line() -> None:
    text = export_line(_letter(detail="a\u2028b\x85c")) + "\n  \r\n" + "not json\n"
    assert list(import_lines(text, RULES)) == [
        (1, _letter(detail="a\u2028b\x85c"), None),
        (4, None, "not JSON (Expecting value: line 1 column 1 (char 0))"),
    ]


@pytest.mark.parametrize(
    ("line", "named"),
    [
        (json.dumps({**GOOD, "event": {"x": math.nan}}), "event: holds NaN"),
        (json.dumps({**GOOD, "died_at": math.inf}), "died_at: Input should be a finite number"),
        ("[1]", "object"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        ("x" * 20_000_000, "bytes"),
    ],
)
def test_import_lines_refuse_what_json_alone_lets_through(line: str, named: str) -> None:
    [(number, record, problem)] = import_lines(line + "\n", RULES)
    assert (number, record) == (1, None) and problem is not None and named in problem


# What the worker may hand `prepare`: text decoded from JSON (lone surrogates but never a
# surrogate pair, which JSON decoding joins into one character), with the line breaks that
# str.splitlines knows about mixed in.
BREAKS = st.sampled_from(["\n", "\r", "\u2028", "\u2029", "\x85", "\x1c", "\x1e", "\x0b"])
TEXT = st.text(
    st.one_of(st.characters(exclude_categories=()), BREAKS, st.sampled_from(["\ud800", "\udfff"]))
).map(lambda s: json.loads(json.dumps(s)))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=20,
)
FAILURE = st.builds(
    ApiFailure,
    kind=st.sampled_from(FailureKind),
    code=TEXT,
    message=TEXT,
    http_status=st.none() | st.integers(100, 599),
    request_id=st.none() | TEXT,
    duration=st.just(0.1),
    maybe_applied=st.booleans(),
)


@st.composite
def worker_records(draw: st.DrawFn) -> DeadRecord:
    """A record as `prepare` makes it from what the worker hands it."""
    event = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "call_id": TEXT,
                "tags": st.lists(TEXT, max_size=5) | TEXT,
                "version": st.integers(-5, 2**60),
                "event_id": TEXT,
                "source": TEXT,
                "extra": JSON,
            },
        )
        | JSON
    )
    try:
        normalized = validate_event(
            event, limits=EventLimits(), default_version=1, default_event_id="e"
        ).as_event()
    except InvalidEvent:
        normalized = None
    times = st.floats(allow_nan=False, allow_infinity=False)  # a message may carry any
    state = RetryState(received=event, first_seen=draw(times))
    for failure in draw(st.lists(FAILURE, max_size=14)):
        state = state.after(failure, draw(times), charged=draw(st.booleans()))
    store = _store(draw(st.sampled_from([256, MAX_RAW, 65_536])))
    prepared = store.prepare(
        record_id=draw(st.uuids().map(str) | TEXT.filter(lambda s: 0 < len(s) <= 128)),
        reason=draw(st.sampled_from(DeadReason)),
        detail=draw(TEXT),
        event=event,
        normalized=normalized,
        attempts=state.attempts,
        attempt_counts=state.counts,
        first_seen=state.first_seen,
        task_id=draw(st.none() | st.uuids().map(str)),
        applied_version=draw(st.none() | st.integers(0, 2**53 - 1)),
    )
    return prepared


@settings(max_examples=300, deadline=None)
@given(st.lists(worker_records(), max_size=4))
def test_what_the_worker_writes_survives_export_then_import_unchanged(
    records: list[DeadRecord],
) -> None:
    written = "".join(export_line(record.letter) for record in records).encode("utf-8")
    read = list(import_lines(written.decode("utf-8"), RecordRules(max_raw_bytes=65_536)))
    assert read == [(n, record.letter, None) for n, record in enumerate(records, 1)]
    again = "".join(export_line(record) for _, record, _ in read if record is not None)
    assert again.encode("utf-8") == written, "read and written again, byte for byte"
