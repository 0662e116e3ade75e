"""Alibaba error codes and HTTP statuses map to transient, permanent or systemic, and to
whether a failed request may still have been applied."""

from __future__ import annotations

import pytest

from tagging_worker.alibaba.classify import FailureKind, classify, maybe_applied, parse_overrides

Q, T = FailureKind.THROTTLED, FailureKind.TRANSIENT
P, S = FailureKind.PERMANENT, FailureKind.SYSTEMIC

CASES = [
    ("Throttling", 400, Q),
    ("Throttling.User", 400, Q),
    ("Throttling.Api", 400, Q),
    ("Throttling.User", 429, Q),
    ("ServiceUnavailable", 503, T),
    ("InternalError", 500, T),
    ("SignatureNonceUsed", 400, T),
    ("Network.ReadTimeout", None, T),
    ("Network.ConnectTimeout", None, T),
    ("Network.ConnectionRefused", None, T),
    ("Network.ConnectError", None, T),
    ("Network.NameResolution", None, T),
    ("Network.ConnectionReset", None, T),
    ("Network.UnparsableResponse", None, T),
    ("Network.SSLError", None, T),
    ("Network.RetryError", None, T),
    ("InvalidResponse", None, T),
    ("MissingParameter", 400, P),
    ("MissingCallId", 400, P),
    ("InvalidParameter", 400, P),
    ("InvalidParameter.Tags", 400, P),
    ("InvalidCallId.NotFound", 404, P),
    ("InvalidAccessKeyId.NotFound", 404, S),
    ("InvalidAccessKeyId.Inactive", 400, S),
    ("SignatureDoesNotMatch", 400, S),
    ("IncompleteSignature", 400, S),
    ("Forbidden", 403, S),
    ("Forbidden.RAM", 403, S),
    ("Forbidden.AccessKeyDisabled", 403, S),
    ("InvalidTimeStamp.Expired", 400, S),
    ("InvalidSecurityToken.Expired", 400, S),
    ("InvalidCredentials", None, S),
    ("InsufficientBalance", 400, S),
    ("SomethingNew", 400, P),
    ("SomethingNew", 404, P),
    ("SomethingNew", 500, T),
    ("SomethingNew", 502, T),
    ("SomethingNew", 429, Q),
    ("SomethingNew", 403, S),
    ("SomethingNew", None, T),
    ("SomethingNew", 200, P),
    (None, None, T),
    (None, 503, T),
    (None, 400, P),
]


@pytest.mark.parametrize(("code", "status", "kind"), CASES)
def test_code_first_then_status_decides_the_kind(
    code: str | None, status: int | None, kind: FailureKind
) -> None:
    assert classify(code, status) is kind


MAYBE_APPLIED_CASES = [
    # sent, then no answer we can trust
    ("Network.ReadTimeout", None, True),
    ("Network.ConnectionReset", None, True),
    ("Network.UnparsableResponse", None, True),
    ("Network.SSLError", None, True),
    ("Network.SomethingNew", None, True),
    (None, None, True),
    ("InvalidResponse", 200, True),
    # a gateway or the API failed on the way: it may have acted first
    ("GatewayTimeout", 504, True),
    ("BadGateway", 502, True),
    (None, 502, True),
    ("InternalError", 500, True),
    ("ServiceUnavailable", 503, True),
    ("Unknown", 500, True),
    ("InvalidParameter", 500, True),
    ("SomethingNew", 302, True),
    # never sent
    ("Network.ConnectTimeout", None, False),
    ("Network.ConnectionRefused", None, False),
    ("Network.ConnectError", None, False),
    ("Network.NameResolution", None, False),
    ("InvalidCredentials", None, False),
    # turned away before the API acted, whatever the status
    ("Throttling.User", 400, False),
    ("Throttling", 503, False),
    ("Throttling.Api", None, False),
    ("SignatureDoesNotMatch", 400, False),
    ("SignatureNonceUsed", 400, False),
    ("InvalidAccessKeyId.NotFound", 404, False),
    ("InvalidTimeStamp.Expired", 400, False),
    ("Forbidden.RAM", 403, False),
    ("Forbidden", 500, False),
    # the API refused it
    ("InvalidParameter", 400, False),
    ("RequestTimeout", 408, False),
    ("SomethingNew", 400, False),
    ("SomethingNew", 404, False),
    ("SomethingNew", 429, False),
    # HTTP 200 with `Success: false`
    ("InvalidParameter.CallId", 200, False),
    ("Throttling.User", 200, False),
    ("SomethingNew", 200, False),
]


@pytest.mark.parametrize(("code", "status", "maybe"), MAYBE_APPLIED_CASES)
def test_a_failure_may_have_been_applied_unless_it_proves_the_api_did_not_act(
    code: str | None, status: int | None, maybe: bool
) -> None:
    assert maybe_applied(code, status) is maybe


def test_success_false_with_a_known_code_is_classified_by_that_code() -> None:
    assert classify("Throttling.User", 200) is Q
    assert classify("InvalidParameter", 200) is P


def test_overrides_win_exact_code_over_prefix_and_longest_prefix_over_shorter() -> None:
    overrides = parse_overrides(
        {"Custom.*": "permanent", "Custom.Busy.*": "transient", "Custom.Busy.Now": "systemic"}
    )

    assert classify("Custom.Other", 500, overrides=overrides) is P
    assert classify("Custom.Busy.Later", 400, overrides=overrides) is T
    assert classify("Custom.Busy.Now", 400, overrides=overrides) is S
    assert classify("InvalidParameter", 400, overrides=overrides) is P


def test_overrides_can_reclassify_a_built_in_code() -> None:
    overrides = parse_overrides({"InsufficientBalance": "transient"})

    assert classify("InsufficientBalance", 400, overrides=overrides) is T


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"X": "sometimes"}, "is not one of"),
        ({"": "transient"}, "non-empty"),
        ({"*": "permanent"}, "non-empty"),
    ],
)
def test_bad_overrides_are_refused_naming_the_code(spec: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_overrides(spec)
