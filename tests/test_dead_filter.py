"""Which dead letters an operator means (pure)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from tagging_worker.state.dead_filter import DeadFilter, last_code, parse_when

NOW = 1_800_000_000.0
RECORD = {
    "id": "e1",
    "reason": "permanent_error",
    "call_id": "call-1",
    "source": "crm",
    "died_at": NOW - 3600,
    "attempts": [{"code": "InternalError"}, {"code": "InvalidParameter.Tags"}],
}


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
    assert last_code(RECORD) == "InvalidParameter.Tags"
    assert last_code({"attempts": []}) is None


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
def test_a_record_with_malformed_attempts_has_no_code_instead_of_failing(attempts: object) -> None:
    assert last_code({"attempts": attempts}) is None


@pytest.mark.parametrize("died_at", [float("inf"), float("nan"), "yesterday", None, [1]])
def test_a_record_with_a_malformed_time_matches_no_time_filter_instead_of_failing(
    died_at: object,
) -> None:
    record = {**RECORD, "died_at": died_at}
    assert DeadFilter(reason="permanent_error").matches(record)
    assert not DeadFilter(since=NOW - 7200).matches(record)
    assert not DeadFilter(until=NOW).matches(record)
