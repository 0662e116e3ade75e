"""The fake API's signature checks, proven with Alibaba Cloud's published examples."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tagging_worker.alibaba.signature import verify_acs3, verify_rpc_v2
from tagging_worker.errors import SignatureError

VECTORS = json.loads((Path(__file__).parent / "data" / "acs-signature-vectors.json").read_text())
V3, V2 = VECTORS["v3"], VECTORS["v2"]


def _secrets(ak: str, secret: str) -> Any:
    return lambda key: secret if key == ak else None


def _verify_v3(
    *,
    secret: str | None = None,
    headers: dict[str, str] | None = None,
    target: str | None = None,
    body: bytes = b"",
    now: datetime | None = None,
) -> str:
    url = urlsplit(target or V3["target"])
    return verify_acs3(
        V3["method"],
        url.path,
        parse_qsl(url.query, keep_blank_values=True),
        headers or V3["headers"],
        body,
        _secrets(V3["access_key_id"], secret or V3["access_key_secret"]),
        now=now,
    )


def _code(call: Any) -> str:
    with pytest.raises(SignatureError) as caught:
        call()
    return caught.value.code


def test_published_acs3_example_verifies_with_its_secret() -> None:
    assert _verify_v3() == "YourAccessKeyId"


def test_published_acs3_example_fails_with_any_other_secret() -> None:
    assert _code(lambda: _verify_v3(secret="YourAccessKeySecreT")) == "SignatureDoesNotMatch"


def test_tampered_query_value_is_refused() -> None:
    target = V3["target"].replace("cn-shanghai", "cn-beijing")
    assert _code(lambda: _verify_v3(target=target)) == "SignatureDoesNotMatch"


def test_tampered_signed_header_is_refused() -> None:
    headers = {**V3["headers"], "x-acs-action": "DeleteInstances"}
    assert _code(lambda: _verify_v3(headers=headers)) == "SignatureDoesNotMatch"


def test_an_unsigned_acs_header_is_refused_as_incomplete() -> None:
    headers = {**V3["headers"], "x-acs-extra": "smuggled"}
    assert _code(lambda: _verify_v3(headers=headers)) == "IncompleteSignature"


def test_body_that_does_not_match_its_content_sha256_is_refused() -> None:
    assert _code(lambda: _verify_v3(body=b"{}")) == "SignatureDoesNotMatch"


def test_missing_authorization_is_refused_as_incomplete() -> None:
    headers = {k: v for k, v in V3["headers"].items() if k != "authorization"}
    assert _code(lambda: _verify_v3(headers=headers)) == "IncompleteSignature"


def test_unknown_access_key_is_not_found_with_http_404() -> None:
    url = urlsplit(V3["target"])
    with pytest.raises(SignatureError) as caught:
        verify_acs3(
            "POST", url.path, parse_qsl(url.query), V3["headers"], b"", lambda key: None, now=None
        )
    assert (caught.value.code, caught.value.http_status) == ("InvalidAccessKeyId.NotFound", 404)


def test_stale_date_is_refused_when_the_clock_check_is_on() -> None:
    now = datetime(2026, 11, 24, tzinfo=timezone.utc)
    assert _code(lambda: _verify_v3(now=now)) == "InvalidTimeStamp.Expired"
    assert _verify_v3(now=datetime(2023, 10, 26, 10, 30, tzinfo=timezone.utc)) == "YourAccessKeyId"


def test_published_rpc_v2_example_verifies_and_fails_with_another_secret() -> None:
    good = _secrets(V2["access_key_id"], V2["access_key_secret"])
    assert verify_rpc_v2(V2["method"], V2["query"], good, now=None) == "testid"
    bad = _secrets(V2["access_key_id"], "othersecret")
    assert _code(lambda: verify_rpc_v2(V2["method"], V2["query"], bad, now=None)) == (
        "SignatureDoesNotMatch"
    )
