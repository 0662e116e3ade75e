"""The history an event carries between attempts: bounded, exact in its counts, and never
upset by what a message carries."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure
from tagging_worker.worker.backoff import GiveUp, next_step
from tagging_worker.worker.retry_state import (
    COUNT_CEILING,
    FIELD_LIMIT,
    KEEP_LAST,
    MESSAGE_LIMIT,
    UNKNOWN_KIND,
    RetryState,
)

NOW = 1_800_000_000.0
EVENT = {"call_id": "call-1", "version": 1, "tags": ["a"]}
KIND_NAMES = [kind.value for kind in FailureKind]
MAX_CARRIED_BYTES = 10_000
"""Worst case of a carried state beyond `received`, as UTF-8 JSON (see the worst-case test)."""


def failure(
    kind: FailureKind = FailureKind.TRANSIENT, code: str = "InternalError", message: str = "boom"
) -> ApiFailure:
    return ApiFailure(
        kind=kind, code=code, message=message, http_status=500, request_id="req-1", duration=0.1
    )


@dataclass(frozen=True)
class _MaybeApplied(ApiFailure):
    maybe_applied: bool = True


def fresh() -> RetryState:
    return RetryState.resume(None, EVENT, NOW)


def replayed(failures: list[tuple[ApiFailure, bool]]) -> RetryState:
    state = fresh()
    for n, (result, charged) in enumerate(failures):
        state = state.after(result, NOW + n, charged=charged)
    return state


def carried_size(state: RetryState) -> int:
    carried = {k: v for k, v in state.as_dict().items() if k != "received"}
    return len(json.dumps(carried, ensure_ascii=False, allow_nan=False).encode())


def through_json(state: RetryState, now: float = NOW) -> RetryState:
    return RetryState.resume(json.loads(json.dumps(state.as_dict())), "other", now)


def old_attempt(n: int, *, kind: str = "transient", charged: bool = True) -> dict[str, Any]:
    """An attempt as workers wrote them before the history was bounded."""
    return {
        "at": NOW + n,
        "code": f"Code{n}",
        "message": "m",
        "http_status": 500,
        "request_id": f"r{n}",
        "kind": kind,
        "charged": charged,
    }


def test_a_fresh_state_has_no_attempts_and_the_event_as_received() -> None:
    state = fresh()

    assert (state.received, state.first_seen, state.attempts) == (EVENT, NOW, [])
    assert state.counts == {
        "attempts_made": 0,
        "attempts_used": 0,
        "elided": 0,
        "elided_kinds": {},
    }


def test_an_attempt_records_the_failure_and_whether_it_was_charged() -> None:
    state = fresh().after(failure(FailureKind.THROTTLED, "Throttling.User"), NOW, charged=False)

    assert state.attempts == [
        {
            "at": NOW,
            "code": "Throttling.User",
            "message": "boom",
            "http_status": 500,
            "request_id": "req-1",
            "kind": "throttled",
            "charged": False,
            "maybe_applied": False,
        }
    ]
    assert (state.attempts_made, state.attempts_used) == (1, 0)


def test_a_failure_that_may_have_been_applied_says_so() -> None:
    maybe = _MaybeApplied(**{**vars(failure()), "maybe_applied": True})

    state = fresh().after(maybe, NOW, charged=True)

    assert state.attempts[0]["maybe_applied"] is True


def test_a_day_of_uncharged_attempts_keeps_the_first_and_the_latest_and_counts_the_rest() -> None:
    state = replayed(
        [(failure(), True)] + [(failure(FailureKind.THROTTLED), False)] * 5000 + [(failure(), True)]
    )

    assert len(state.attempts) == 1 + KEEP_LAST
    assert state.attempts[0]["at"] == NOW
    assert state.attempts[-1]["at"] == NOW + 5001
    assert (state.attempts_made, state.attempts_used, state.elided) == (5002, 2, 5002 - 11)
    assert state.elided_kinds == {"throttled": 5002 - 11}
    assert carried_size(state) < 3_000


def test_charged_attempts_that_were_elided_still_count_against_the_limit() -> None:
    state = replayed([(failure(), True)] * 5 + [(failure(FailureKind.THROTTLED), False)] * 20)
    state = through_json(state)

    assert sum(a["charged"] for a in state.attempts) == 1
    assert state.attempts_used == 5
    assert next_step(
        attempts_made=state.attempts_used,
        max_attempts=5,
        first_seen=state.first_seen,
        now=NOW,
        max_age=86_400,
        delay=1.0,
    ) == GiveUp("retries_exhausted")


def test_a_long_error_message_is_clipped_with_a_marker_saying_how_long_it_was() -> None:
    state = fresh().after(failure(code="C" * 1000, message="x" * 100_000), NOW, charged=True)
    attempt = state.attempts[0]

    assert len(attempt["message"]) == MESSAGE_LIMIT
    assert attempt["message"].endswith("...[100000 chars in all]")
    assert len(attempt["code"]) == FIELD_LIMIT
    assert attempt["code"].startswith("C" * 50)


def test_the_clip_counts_bytes_as_json_so_escaped_control_characters_cannot_overflow() -> None:
    message = fresh().after(failure(message="\x00" * 1000), NOW, charged=True).attempts[0]
    escaped = json.dumps(message["message"], ensure_ascii=False)

    assert len(escaped.encode()) - 2 <= MESSAGE_LIMIT


def test_a_message_within_the_limit_is_kept_as_it_is() -> None:
    text = "指定的参数无效" * 20
    assert fresh().after(failure(message=text), NOW, charged=True).attempts[0]["message"] == text


def test_an_old_message_without_counters_is_counted_and_trimmed() -> None:
    attempts = [old_attempt(0)] + [old_attempt(n, kind="throttled", charged=False) for n in (1, 2)]
    attempts += [old_attempt(n) for n in range(3, 30)]
    carried = {"received": EVENT, "first_seen": NOW - 60, "attempts": attempts}

    state = RetryState.resume(carried, "ignored", NOW)

    assert (state.received, state.first_seen) == (EVENT, NOW - 60)
    assert (state.attempts_made, state.attempts_used) == (30, 28)
    assert [a["code"] for a in state.attempts] == ["Code0"] + [f"Code{n}" for n in range(20, 30)]
    assert state.elided_kinds == {"throttled": 2, "transient": 17}
    assert state.attempts[0] == {**old_attempt(0), "maybe_applied": False}


def test_an_old_message_with_few_attempts_keeps_them_all() -> None:
    carried = {"received": EVENT, "first_seen": NOW, "attempts": [old_attempt(0), old_attempt(1)]}

    state = RetryState.resume(carried, EVENT, NOW)

    assert [a["code"] for a in state.attempts] == ["Code0", "Code1"]
    assert (state.attempts_made, state.attempts_used, state.elided) == (2, 2, 0)


@pytest.mark.parametrize("carried", [None, {}, [], ""])
def test_no_carried_state_starts_afresh(carried: Any) -> None:
    assert RetryState.resume(carried, EVENT, NOW) == fresh()


@pytest.mark.parametrize(
    ("carried", "expected"),
    [
        ("not a dict", {"first_seen": NOW, "attempts_made": 0}),
        ([old_attempt(0)], {"first_seen": NOW, "attempts_made": 0}),
        ({"first_seen": float("nan")}, {"first_seen": NOW}),
        ({"first_seen": float("inf")}, {"first_seen": NOW}),
        ({"first_seen": 10**400}, {"first_seen": NOW}),
        ({"first_seen": "1700000000"}, {"first_seen": NOW}),
        ({"first_seen": True}, {"first_seen": NOW}),
        ({"first_seen": 5}, {"first_seen": 5.0}),
        ({"attempts": "many"}, {"attempts_made": 0}),
        ({"attempts": {"0": old_attempt(0)}}, {"attempts_made": 0}),
        ({"attempts": [1, None, "x", [], old_attempt(0)]}, {"attempts_made": 1}),
        ({"attempts": [old_attempt(0)], "attempts_made": -3}, {"attempts_made": 1}),
        ({"attempts": [old_attempt(0)], "attempts_made": "9"}, {"attempts_made": 1}),
        ({"attempts": [old_attempt(0)], "attempts_made": 0}, {"attempts_made": 1}),
        ({"attempts_made": 10**400}, {"attempts_made": COUNT_CEILING}),
        # Counters beyond what the attempts can account for are clamped to them.
        (
            {"attempts": [old_attempt(0)], "attempts_made": 5, "attempts_used": 99},
            {"attempts_made": 5, "attempts_used": 5},
        ),
        (
            {"attempts": [old_attempt(0, charged=False)], "attempts_made": 1, "attempts_used": 1},
            {"attempts_used": 0},
        ),
        # Without a readable count of charged attempts, the elided ones are assumed charged.
        ({"attempts_made": 4, "attempts_used": None}, {"attempts_used": 4}),
        (
            {"attempts_made": 4, "attempts_used": 4, "elided_kinds": {"throttled": 3}},
            {"elided_kinds": {UNKNOWN_KIND: 4}},
        ),
        (
            {"attempts_made": 4, "attempts_used": 0, "elided_kinds": {"odd": 3, "throttled": 1}},
            {"elided_kinds": {UNKNOWN_KIND: 3, "throttled": 1}},
        ),
        ({"attempts_made": 2, "elided_kinds": "lots"}, {"elided_kinds": {UNKNOWN_KIND: 2}}),
    ],
)
def test_a_hostile_carried_state_falls_back_to_sane_values(
    carried: Any, expected: dict[str, Any]
) -> None:
    state = RetryState.resume(carried, EVENT, NOW)

    assert {name: getattr(state, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({}, {"at": NOW, "code": "", "message": "", "http_status": None, "request_id": None}),
        ({"at": float("nan"), "http_status": 10**6}, {"at": NOW, "http_status": None}),
        ({"http_status": True, "request_id": 7}, {"http_status": None, "request_id": None}),
        ({"code": ["x"], "message": {"m": 1}}, {"code": "", "message": ""}),
        ({"kind": "exotic"}, {"kind": UNKNOWN_KIND}),
        ({"kind": ["throttled"]}, {"kind": UNKNOWN_KIND}),
        ({"message": "bad \ud800 half"}, {"message": "bad ? half"}),
        # Only an explicit False is uncharged: a forged message earns no extra attempts.
        ({"charged": 0}, {"charged": True}),
        ({"charged": "no"}, {"charged": True}),
        ({"maybe_applied": "yes"}, {"maybe_applied": False}),
    ],
)
def test_a_hostile_attempt_is_read_as_a_well_formed_one(
    item: dict[str, Any], expected: dict[str, Any]
) -> None:
    (attempt,) = RetryState.resume({"first_seen": NOW, "attempts": [item]}, EVENT, NOW).attempts

    assert {name: attempt[name] for name in expected} == expected


def test_building_an_inconsistent_state_directly_is_refused() -> None:
    with pytest.raises(ValueError, match="inconsistent"):
        RetryState(received=EVENT, first_seen=NOW, attempts=[old_attempt(0)])


def test_the_worst_case_carried_state_stays_under_its_bound() -> None:
    worst = "\x00" * 5000  # six bytes each once escaped
    attempt = {
        **old_attempt(0),
        "at": -2.2250738585072014e-308,
        "code": worst,
        "message": worst,
        "request_id": worst,
        "http_status": 999,
    }
    carried = {
        "first_seen": -2.2250738585072014e-308,
        "attempts": [attempt] * 50,
        "attempts_made": 10**12,
        "attempts_used": 10**12,
        # Accounts for the 10**9 - 50 attempts elided before these 50, across every kind.
        "elided_kinds": {name: 10**8 for name in KIND_NAMES}
        | {UNKNOWN_KIND: COUNT_CEILING - 50 - len(KIND_NAMES) * 10**8},
    }

    state = RetryState.resume(carried, EVENT, NOW)

    assert len(state.elided_kinds) == len(FailureKind) + 1
    assert 9_000 < carried_size(state) <= MAX_CARRIED_BYTES


failures = st.builds(
    failure,
    kind=st.sampled_from(FailureKind),
    code=st.text(max_size=150),
    message=st.text(max_size=700),
)


@settings(deadline=None)
@given(st.lists(st.tuples(failures, st.booleans()), max_size=60))
def test_any_history_is_bounded_exact_and_keeps_its_first_and_latest_attempts(
    history: list[tuple[ApiFailure, bool]],
) -> None:
    state = replayed(history)
    each = [
        fresh().after(result, NOW + n, charged=charged).attempts[0]
        for n, (result, charged) in enumerate(history)
    ]
    kept = each if len(each) <= 1 + KEEP_LAST else [each[0], *each[-KEEP_LAST:]]
    elided = each[1:-KEEP_LAST] if len(each) > 1 + KEEP_LAST else []

    assert state.attempts == kept
    assert state.attempts_made == len(history)
    assert state.attempts_used == sum(charged for _, charged in history)
    assert state.elided == len(elided)
    assert state.elided_kinds == Counter(a["kind"] for a in elided)
    assert carried_size(state) <= MAX_CARRIED_BYTES


@settings(deadline=None)
@given(st.lists(st.tuples(failures, st.booleans()), max_size=40))
def test_any_history_survives_the_trip_through_a_message_unchanged(
    history: list[tuple[ApiFailure, bool]],
) -> None:
    state = replayed(history)

    assert through_json(state, now=NOW + 9999) == state


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["\ud800", "\x00" * 700, "x" * 2000, *KIND_NAMES])
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
attempt_like = json_like | st.fixed_dictionaries(
    {},
    optional={
        name: json_like
        for name in ("at", "code", "message", "http_status", "request_id", "kind", "charged")
    },
)
carried_like = json_like | st.fixed_dictionaries(
    {},
    optional={
        "received": json_like,
        "first_seen": json_like,
        "attempts": st.lists(attempt_like, max_size=30) | json_like,
        "attempts_made": st.integers() | json_like,
        "attempts_used": st.integers() | json_like,
        "elided_kinds": st.dictionaries(st.sampled_from([*KIND_NAMES, "odd"]), st.integers())
        | json_like,
    },
)


@settings(deadline=None)
@given(carried_like)
def test_any_carried_state_resumes_into_a_bounded_state_that_resumes_as_itself(
    carried: Any,
) -> None:
    state = RetryState.resume(carried, EVENT, NOW)
    again = RetryState.resume(json.loads(json.dumps(state.as_dict())), EVENT, NOW)

    assert carried_size(state) <= MAX_CARRIED_BYTES
    assert replace(again, received=None) == replace(state, received=None)
