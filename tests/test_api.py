"""The SDK wrapper against the fake API: every way the API can answer becomes one result."""

from __future__ import annotations

from typing import Any

import pytest

from tagging_worker.api import ApiFailure, ApiSuccess, TagsApi
from tagging_worker.classify import FailureKind
from tagging_worker.fake_api.server import FakeAlibabaApi
from tagging_worker.settings import load_settings
from tests.conftest import ACCESS_KEY_ID, ACCESS_KEY_SECRET

Q, T = FailureKind.THROTTLED, FailureKind.TRANSIENT
P, S = FailureKind.PERMANENT, FailureKind.SYSTEMIC


def _client(fake_api: FakeAlibabaApi, **overrides: Any) -> TagsApi:
    settings = {
        "api_endpoint": fake_api.endpoint,
        "api_protocol": "http",
        "access_key_id": ACCESS_KEY_ID,
        "access_key_secret": ACCESS_KEY_SECRET,
        "api_read_timeout_ms": 300,
        **overrides,
    }
    return TagsApi(load_settings(**settings))


def test_success_stores_the_tags_as_sent(fake_api: FakeAlibabaApi) -> None:
    result = _client(fake_api).update_tags("call-1", '["有意向","需跟进"]')

    assert isinstance(result, ApiSuccess) and result.request_id
    assert fake_api.tags_of("call-1") == ["有意向", "需跟进"]


@pytest.mark.parametrize(
    ("fault", "kind", "code", "status"),
    [
        ({"kind": "throttle"}, Q, "Throttling.User", 400),
        (
            {"kind": "error", "code": "ServiceUnavailable", "http_status": 503},
            T,
            "ServiceUnavailable",
            503,
        ),
        ({"kind": "error", "code": "InternalError", "http_status": 500}, T, "InternalError", 500),
        (
            {"kind": "error", "code": "InvalidParameter", "http_status": 400},
            P,
            "InvalidParameter",
            400,
        ),
        ({"kind": "error", "code": "Forbidden.RAM", "http_status": 403}, S, "Forbidden.RAM", 403),
        (
            {"kind": "error", "code": "InsufficientBalance", "http_status": 400},
            S,
            "InsufficientBalance",
            400,
        ),
        (
            {"kind": "success_false", "code": "InvalidParameter.CallId"},
            P,
            "InvalidParameter.CallId",
            200,
        ),
        (
            {"kind": "success_false", "code": "Throttling.User", "where": "data"},
            Q,
            "Throttling.User",
            200,
        ),
    ],
)
def test_error_answers_are_classified_with_code_status_and_request_id(
    fake_api: FakeAlibabaApi, fault: dict[str, Any], kind: FailureKind, code: str, status: int
) -> None:
    fake_api.add_fault(**fault)

    result = _client(fake_api).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.http_status) == (kind, code, status)
    assert result.request_id
    assert fake_api.tags_of("call-1") is None


def test_throttling_with_retry_after_carries_the_hint_in_seconds(fake_api: FakeAlibabaApi) -> None:
    fake_api.add_fault("throttle", retry_after_ms=1500)

    result = _client(fake_api).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure) and result.retry_after == 1.5


@pytest.mark.parametrize(
    "fault",
    [{"kind": "close"}, {"kind": "garbage"}, {"kind": "stall", "seconds": 0.6}],
    ids=["connection-dropped", "non-json-body", "read-timeout"],
)
def test_transport_failures_are_transient_without_an_http_status(
    fake_api: FakeAlibabaApi, fault: dict[str, Any]
) -> None:
    fake_api.add_fault(**fault)

    result = _client(fake_api).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert result.kind is T and result.http_status is None and result.code.startswith("Network.")


def test_connection_refused_is_transient() -> None:
    settings = load_settings(
        api_endpoint="127.0.0.1:9",
        api_protocol="http",
        access_key_id=ACCESS_KEY_ID,
        access_key_secret=ACCESS_KEY_SECRET,
    )
    result = TagsApi(settings).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure) and result.kind is T


def test_wrong_secret_is_systemic_signature_does_not_match(fake_api: FakeAlibabaApi) -> None:
    result = _client(fake_api, access_key_secret="wrong").update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code) == (S, "SignatureDoesNotMatch")


def test_unknown_access_key_is_systemic(fake_api: FakeAlibabaApi) -> None:
    result = _client(fake_api, access_key_id="nobody").update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.http_status) == (S, "InvalidAccessKeyId.NotFound", 404)


def test_missing_credentials_are_systemic(
    fake_api: FakeAlibabaApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALIBABA_CLOUD_PROFILE", "none")
    monkeypatch.setenv("ALIBABA_CLOUD_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("HOME", "/nonexistent")

    result = _client(fake_api, access_key_id=None, access_key_secret=None).update_tags("c", "[]")

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code) == (S, "InvalidCredentials")
    assert fake_api.calls() == []


def test_the_sdk_sends_call_id_and_tags_in_the_query_with_an_acs3_signature(
    fake_api: FakeAlibabaApi,
) -> None:
    _client(fake_api).update_tags("call-1 x", '["a b"]')

    [call] = fake_api.calls()
    assert (call.call_id, call.tags, call.access_key_id) == ("call-1 x", ["a b"], ACCESS_KEY_ID)


def test_an_error_keeps_the_apis_own_message_without_the_sdks_wrapping(
    fake_api: FakeAlibabaApi,
) -> None:
    fake_api.add_fault("error", code="InvalidParameter.Tags", http_status=400, message="Bad tag.")
    result = _client(fake_api).update_tags("call-1", '["x"]')
    assert isinstance(result, ApiFailure)
    assert result.message == "Bad tag." and result.request_id
