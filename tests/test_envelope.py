"""Checking a queue item before Celery touches it: total, bounded, and naming the problem."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.transport.virtual import Message

from tagging_worker.worker.envelope import body_problem, header_problem, single_event
from tagging_worker.worker.poison import OPAQUE_CONTENT_TYPE, diagnose, tolerant_loads
from tests.hostile import DEEP, catalogue, hostile_items, nested

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
HEADERS = json.loads(catalogue("q")["header retries a string"])["headers"] | {"retries": 0}


class _Channel:
    """What kombu's virtual Message needs of a channel to be built and decoded."""

    no_ack = True

    @staticmethod
    def decode_body(body: str, encoding: str | None) -> bytes | str:
        return base64.b64decode(body) if encoding == "base64" else body


def _message(raw: bytes) -> Any:
    """The kombu message a worker would make of a queue item: through our decoder first."""
    payload = tolerant_loads(raw.decode("utf-8", "replace"))
    message = Message(payload, channel=_Channel())
    message.accept = ["application/json"]
    return message


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"id": {"a": 1}}, "undecodable_message", "the id header must be 1 to 255"),
        ({"id": None}, "undecodable_message", "the id header must be 1 to 255"),
        ({"task": ["t"]}, "undecodable_message", "the task header is list, not a string"),
        ({"retries": "many"}, "undecodable_message", "the retries header must be a non-negative"),
        ({"timelimit": "soon"}, "undecodable_message", "the timelimit header must be [soft, hard]"),
        ({"eta": "not a date"}, "undecodable_message", "the eta header is not an ISO 8601"),
        ({"expires": 5}, "undecodable_message", "the expires header is not an ISO 8601"),
        ({"root_id": {"x": 1}}, "undecodable_message", "the root_id header is dict"),
        ({"expires": (NOW - timedelta(seconds=1)).isoformat()}, "expired", "it expired at"),
    ],
)
def test_headers_celery_cannot_build_a_request_from_are_named(
    change: dict[str, Any], reason: str, detail: str
) -> None:
    problem = header_problem(HEADERS | change, now=NOW)

    assert problem is not None
    assert (problem.reason, problem.detail[: len(detail)]) == (reason, detail)


def test_headers_of_a_message_the_worker_builds_pass() -> None:
    later = (NOW + timedelta(hours=1)).isoformat()

    assert header_problem(HEADERS, now=NOW) is None
    assert header_problem(HEADERS | {"expires": later, "eta": later}, now=NOW) is None


@pytest.mark.parametrize(
    ("body", "eta", "reason"),
    [
        ([[{}], {}, {"callbacks": [{"task": "x"}]}], None, "unsupported_option"),
        ([[{}], {}, {"chain": [{"task": "x"}]}], None, "unsupported_option"),
        ([[{}], {}, {}], (NOW + timedelta(days=2)).isoformat(), "unsupported_option"),
        ([{"a": 1}, {}, {}], None, "invalid_event"),
        ([[{"call_id": "\ud800"}], {}, {}], None, "invalid_event"),
        ("just text", None, "invalid_event"),
    ],
)
def test_bodies_this_task_cannot_run_are_named(body: Any, eta: str | None, reason: str) -> None:
    problem = body_problem(body, max_eta_seconds=86_400, eta=eta, now=NOW)

    assert problem is not None and problem.reason == reason


def test_a_body_with_an_eta_within_the_maximum_age_runs() -> None:
    eta = (NOW + timedelta(hours=1)).isoformat()
    body = [[{}], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]

    assert body_problem(body, max_eta_seconds=86_400, eta=eta, now=NOW) is None


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ([[{"call_id": "c"}], {"retry_state": {"a": 1}}, {}], ({"call_id": "c"}, {"a": 1})),
        ([[{"call_id": "c"}], {}, None], ({"call_id": "c"}, None)),
        ([[{"call_id": "c"}, {}], {}, {}], None),
        ([["c"], {}, {}], None),
        ([[{"call_id": "c"}], {}, "embed"], None),
        ([[{"call_id": "\ud800"}], {}, {}], None),
    ],
)
def test_a_body_is_kept_as_its_event_only_when_it_holds_one_plain_event(
    body: Any, found: Any
) -> None:
    assert single_event(body) == found


def test_a_quarantine_wrapper_becomes_an_opaque_message_holding_the_original_item() -> None:
    original = catalogue("q")["header retries a string"].decode()
    wrapper = json.dumps({"quarantined": {"crashes": 3}, "item": original})

    decoded = tolerant_loads(wrapper)

    assert decoded["content-type"] == OPAQUE_CONTENT_TYPE
    assert base64.b64decode(decoded["body"]).decode() == original
    assert decoded["headers"]["x-tagging-reason"] == "poison_message"


@pytest.mark.parametrize("name", list(catalogue("q")))
def test_every_catalogued_hostile_item_is_diagnosed_without_raising(name: str) -> None:
    message = _message(catalogue("q")[name])

    diagnose(message, now=NOW, max_eta_seconds=86_400)


def test_an_item_nested_10000_deep_is_opaque_naming_why() -> None:
    decoded = tolerant_loads(nested(DEEP))

    assert decoded["headers"]["x-tagging-detail"] == "the queue item is nested too deep to parse"


@settings(max_examples=300, deadline=None)
@given(raw=hostile_items("q"))
def test_any_queue_item_is_either_runnable_or_has_a_problem_and_never_raises(raw: bytes) -> None:
    problem = diagnose(_message(raw), now=NOW, max_eta_seconds=86_400)

    assert problem is None or (problem.reason and problem.detail)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_text_decodes_to_an_envelope_or_an_opaque_message(text: str) -> None:
    decoded = tolerant_loads(text)

    assert isinstance(decoded, (dict, list))
