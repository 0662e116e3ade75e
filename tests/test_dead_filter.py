"""Which dead letters an operator means (pure)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from tagging_worker.state.dead_filter import DeadFilter, parse_when
from tagging_worker.state.dead_letters import DamagedRecord, DeadLetter, RecordRules, read_record

NOW = 1_800_000_000.0
WHOLE = {
    "id": "e1",
    "reason": "permanent_error",
    "detail": "InvalidParameter.Tags: no",
    "call_id": "call-1",
    "source": "crm",
    "event": {},
    "died_at": NOW - 3600,
    "attempts": [{"code": "InternalError"}, {"code": "InvalidParameter.Tags"}],
}
RULES = RecordRules(max_raw_bytes=None)
DAMAGED = DamagedRecord(
    id="e2", problem="detail is missing", reason="permanent_error", call_id="call-1", died_at=None
)
"""A damaged record as the store reads it when its time of death is unusable too."""


def _letter(**change: Any) -> DeadLetter:
    record = read_record({**WHOLE, **change}, RULES)
    assert isinstance(record, DeadLetter), record
    return record


RECORD = _letter()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - 1800),
        ("2h", NOW - 7200),
        ("7d", NOW - 7 * 86400),
        ("1.5h", NOW - 5400),
        ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, tzinfo=timezone.utc).timestamp()),
        ("2026-11-24T10:00:00", datetime(2026, 11, 24, 10, tzinfo=timezone.utc).timestamp()),
        ("2026-11-24T18:00:00+08:00", datetime(2026, 11, 24, 10, tzinfo=timezone.utc).timestamp()),
    ],
)
def test_times_are_iso_or_ages_before_now(text: str, expected: float) -> None:
    assert parse_when(text, now=NOW) == expected


def test_a_time_that_is_neither_says_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="ISO-8601 time nor an age"):
        parse_when("yesterday", now=NOW)


def test_the_code_of_a_record_is_its_last_attempts() -> None:
    assert RECORD.code == "InvalidParameter.Tags"
    assert _letter(attempts=[]).code is None
    assert _letter(attempts=[{"code": "X"}, {}]).code is None


@pytest.mark.parametrize(
    ("where", "matches"),
    [
        (DeadFilter(), True),
        (DeadFilter(reason="permanent_error"), True),
        (DeadFilter(reason="expired"), False),
        (DeadFilter(code="InvalidParameter.Tags"), True),
        (DeadFilter(code="InternalError"), False),
        (DeadFilter(call_id="call-2"), False),
        (DeadFilter(source="crm"), True),
        (DeadFilter(source="hook"), False),
        (DeadFilter(since=NOW - 7200, until=NOW), True),
        (DeadFilter(since=NOW - 1800), False),
        (DeadFilter(until=NOW - 3600), False),
    ],
)
def test_a_record_matches_when_every_given_filter_does(where: DeadFilter, matches: bool) -> None:
    assert where.matches(RECORD) is matches


def test_a_filter_describes_itself_for_confirmations() -> None:
    assert DeadFilter().describe() == "all" and DeadFilter().empty
    assert DeadFilter(reason="expired", code="X").describe() == "reason=expired, code=X"


@pytest.mark.parametrize(
    "attempts", ["abc", [1, 2], [{"code": 5}], [["code"]], {"code": "X"}, None, 7]
)
def test_a_record_with_malformed_attempts_is_damaged_and_has_no_code(attempts: object) -> None:
    assert isinstance(read_record({**WHOLE, "attempts": attempts}, RULES), str)
    assert DAMAGED.code is None
    assert not DeadFilter(code="InvalidParameter.Tags").matches(DAMAGED)


@pytest.mark.parametrize("died_at", [float("inf"), float("nan"), "yesterday", None, [1]])
def test_a_record_with_a_malformed_time_is_damaged_and_matches_no_time_filter(
    died_at: object,
) -> None:
    assert isinstance(read_record({**WHOLE, "died_at": died_at}, RULES), str)
    assert DeadFilter(reason="permanent_error", call_id="call-1").matches(DAMAGED)
    assert not DeadFilter(since=NOW - 7200).matches(DAMAGED)
    assert not DeadFilter(until=NOW).matches(DAMAGED)


def test_a_damaged_record_matches_by_what_its_indexes_know_only() -> None:
    dated = DamagedRecord(
        id="e2", problem="x", reason="permanent_error", call_id="call-1", died_at=NOW - 3600
    )
    assert DeadFilter(reason="permanent_error", since=NOW - 7200, until=NOW).matches(dated)
    assert not DeadFilter(reason="expired").matches(dated)
    assert not DeadFilter(source="crm").matches(dated)
