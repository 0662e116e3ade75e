"""The one place that talks to Alibaba Cloud: `UpdateOutboundCallTags` through the tea-openapi SDK.

The SDK reports failures in four exception types and one success-shaped body; callers get a
single small result instead, already classified, so retry decisions never touch SDK types.
`TagsApi.check` proves the set-up with a request that changes nothing.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from alibabacloud_credentials.client import Client as CredentialClient
from alibabacloud_credentials.exceptions import CredentialException
from alibabacloud_openapi_util.client import Client as OpenApiUtilClient
from alibabacloud_tea_openapi import models as open_api_models
from alibabacloud_tea_openapi.client import Client as OpenApiClient
from alibabacloud_tea_openapi.exceptions import AlibabaCloudException
from alibabacloud_tea_util import models as util_models
from darabonba.exceptions import RetryError, UnretryableException
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from tagging_worker.alibaba.classify import FailureKind, classify, maybe_applied
from tagging_worker.alibaba.config import ApiConfig
from tagging_worker.alibaba.results import ApiFailure, ApiResult, ApiSuccess

ACTION = "UpdateOutboundCallTags"
API_VERSION = "2025-11-27"
CREDENTIALS_MISSING = "InvalidCredentials"

CHECK_CALL_ID = "tagging-worker-check"
"""No call has this id (the API's are `call-...`), so even an API that took the check's tags
would tag nothing."""
CHECK_TAGS = "{}"
"""Not the JSON array the API takes: it must refuse the request on its merits (the fake says
`InvalidParameter.Tags`), which it judges only once the gateway has accepted the signature,
the RAM permission and the time."""

# The SDK wraps every transport failure in the same RetryError; the exception chain under it
# (requests -> urllib3 -> socket) tells where it broke. First match wins, so the failures
# while connecting (the request never left) stand before those after sending. urllib3's
# NewConnectionError subclasses ConnectTimeoutError, hence its place.
_TRANSPORT_CODES: tuple[tuple[type[BaseException], str], ...] = (
    (socket.gaierror, "Network.NameResolution"),
    (ConnectionRefusedError, "Network.ConnectionRefused"),
    (NewConnectionError, "Network.ConnectError"),
    (ConnectTimeoutError, "Network.ConnectTimeout"),
    (ReadTimeoutError, "Network.ReadTimeout"),
    (SSLError, "Network.SSLError"),
    (ProtocolError, "Network.ConnectionReset"),
    (ConnectionResetError, "Network.ConnectionReset"),
    (json.JSONDecodeError, "Network.UnparsableResponse"),
    (UnicodeDecodeError, "Network.UnparsableResponse"),
)


class SetupProblem(str, Enum):
    """What a check not answered on its merits says is wrong with the set-up."""

    UNREACHABLE = "unreachable"
    """No connection to the endpoint: its name, the port, a firewall, TLS."""
    NOT_THE_API = "not_the_api"
    """Something answered, but not as the API does: no RequestId, not JSON, no such action or
    version there."""
    SIGNATURE = "signature"
    """The access key id, secret or token is wrong, or there is none to sign with."""
    PERMISSION = "permission"
    """The key may not call the action (RAM)."""
    CLOCK = "clock"
    """The request's time is too far from the API's."""
    ACCOUNT = "account"
    """The account itself (its balance), or another set-up failure the API named."""
    UNAVAILABLE = "unavailable"
    """The API did not judge the request (throttled, 5xx, a timeout): nothing is proven."""


_PROBLEM_CODES: tuple[tuple[SetupProblem, tuple[str, ...]], ...] = (
    (
        SetupProblem.SIGNATURE,
        (
            "SignatureDoesNotMatch",
            "IncompleteSignature",
            "InvalidAccessKeyId",
            "InvalidAccessKeySecret",
            "InvalidSecurityToken",
            CREDENTIALS_MISSING,
        ),
    ),
    (SetupProblem.CLOCK, ("InvalidTimeStamp",)),
    (SetupProblem.PERMISSION, ("Forbidden", "NoPermission")),
    (SetupProblem.ACCOUNT, ("InsufficientBalance",)),
    (
        SetupProblem.NOT_THE_API,
        ("InvalidAction", "InvalidVersion", "InvalidResponse", "Network.UnparsableResponse"),
    ),
    (
        SetupProblem.UNREACHABLE,
        (
            "Network.NameResolution",
            "Network.ConnectionRefused",
            "Network.ConnectError",
            "Network.ConnectTimeout",
            "Network.SSLError",
        ),
    ),
)
"""Codes by prefix, first match wins, by what they say to fix (the systemic ones are those of
`classify.py`)."""


@dataclass(frozen=True)
class Checked:
    """What `TagsApi.check` came to: the call's result and, unless the API answered it on its
    merits, what that says is wrong."""

    result: ApiResult
    problem: SetupProblem | None

    @property
    def answered(self) -> bool:
        """The endpoint, the key and secret, their permission and the clock are right."""
        return self.problem is None


def diagnose(result: ApiResult) -> SetupProblem | None:
    """None when the API judged the request on its merits (refused it as a request, or took
    it); otherwise what stopped it before that. Alibaba Cloud names the request it answers
    (RequestId): an answer without one comes from something else at that address."""
    if result.request_id is None and (isinstance(result, ApiSuccess) or result.http_status):
        return SetupProblem.NOT_THE_API
    if isinstance(result, ApiSuccess):
        return None
    for problem, codes in _PROBLEM_CODES:
        if result.code.startswith(codes):
            return problem
    if result.kind is FailureKind.PERMANENT:
        return None
    if result.kind is FailureKind.SYSTEMIC:
        return {401: SetupProblem.SIGNATURE, 403: SetupProblem.PERMISSION}.get(
            result.http_status or 0, SetupProblem.ACCOUNT
        )
    return SetupProblem.UNAVAILABLE


class TagsApi:
    """A process-wide client; the SDK pools connections per host and is safe across threads."""

    def __init__(self, config: ApiConfig) -> None:
        self._overrides = config.error_codes
        self._client = OpenApiClient(_sdk_config(config))
        self._params = open_api_models.Params(
            style="RPC",
            version=API_VERSION,
            action=ACTION,
            method="POST",
            pathname="/",
            protocol=config.protocol,
            auth_type="AK",
            req_body_type="json",
            body_type="json",
        )
        # SDK retries stay off (no retry_options): the queue retries, with backoff we control.
        self._runtime = util_models.RuntimeOptions()

    def update_tags(self, call_id: str, tags_json: str) -> ApiResult:
        request = open_api_models.OpenApiRequest(
            query=OpenApiUtilClient.query({"CallId": call_id, "Tags": tags_json})
        )
        started = time.monotonic()
        try:
            response = self._client.call_api(self._params, request, self._runtime)
        except AlibabaCloudException as exc:
            return self._failure_from_response_error(exc, time.monotonic() - started)
        except UnretryableException as exc:
            return self._failure_from_transport_error(exc, time.monotonic() - started)
        return self._result_from_body(response.get("body"), time.monotonic() - started)

    def check(self) -> Checked:
        """One signed request that changes nothing (`CHECK_CALL_ID`, `CHECK_TAGS`), sent the way
        every update goes: answered on its merits, it proves the set-up right; refused before
        them, it says what is wrong (`doctor`, `circuit probe`)."""
        result = self.update_tags(CHECK_CALL_ID, CHECK_TAGS)
        return Checked(result=result, problem=diagnose(result))

    def _failure_from_response_error(
        self, exc: AlibabaCloudException, duration: float
    ) -> ApiFailure:
        code = exc.code if exc.code not in (None, "", "None") else "Unknown"
        retry_after = getattr(exc, "retry_after", None)
        # The SDK's message wraps the API's own in "code: 400, ... request id: ..."; both of
        # those are fields of their own here.
        body = exc.data if isinstance(exc.data, Mapping) else {}
        message = body.get("Message") or body.get("message") or exc.message or ""
        return ApiFailure(
            kind=classify(code, exc.status_code, overrides=self._overrides),
            code=code,
            message=str(message),
            http_status=exc.status_code,
            request_id=exc.request_id if exc.request_id not in (None, "None") else None,
            duration=duration,
            retry_after=retry_after / 1000 if retry_after else None,
            maybe_applied=maybe_applied(code, exc.status_code),
        )

    def _failure_from_transport_error(
        self, exc: UnretryableException, duration: float
    ) -> ApiFailure:
        inner = exc.inner_exception
        # RetryError only repeats its cause's text; the cause names what broke.
        cause = (inner.__context__ if isinstance(inner, RetryError) else None) or inner
        code = (
            CREDENTIALS_MISSING
            if isinstance(inner, CredentialException)
            else _transport_code(cause)
        )
        return ApiFailure(
            kind=classify(code, None, overrides=self._overrides),
            code=code,
            message=_one_line(cause),
            http_status=None,
            request_id=None,
            duration=duration,
            maybe_applied=maybe_applied(code, None),
        )

    def _result_from_body(self, body: Any, duration: float) -> ApiResult:
        """HTTP 200 can still say `Success: false`, at the top or inside `Data`."""
        if not isinstance(body, Mapping):
            return ApiFailure(
                kind=classify("InvalidResponse", None, overrides=self._overrides),
                code="InvalidResponse",
                message=f"expected a JSON object, got {type(body).__name__}",
                http_status=200,
                request_id=None,
                duration=duration,
                maybe_applied=maybe_applied("InvalidResponse", 200),
            )
        request_id = body.get("RequestId")
        data = body.get("Data")
        refusal = body if body.get("Success") is False else None
        if refusal is None and isinstance(data, Mapping) and data.get("Success") is False:
            refusal = data
        if refusal is None:
            return ApiSuccess(request_id=request_id, duration=duration)
        code = refusal.get("Code") or body.get("Code") or "Unknown"
        return ApiFailure(
            kind=classify(code, 200, overrides=self._overrides),
            code=code,
            message=str(refusal.get("Message") or body.get("Message") or ""),
            http_status=200,
            request_id=request_id,
            duration=duration,
            maybe_applied=maybe_applied(code, 200),
        )


def _sdk_config(config: ApiConfig) -> open_api_models.Config:
    """Explicit keys (the seed's ACCESS_KEY_ID/SECRET) win; otherwise Alibaba's default chain."""
    sdk = open_api_models.Config(
        endpoint=config.endpoint,
        protocol=config.protocol,
        connect_timeout=config.connect_timeout_ms,
        read_timeout=config.read_timeout_ms,
    )
    if config.access_key_id and config.access_key_secret:
        sdk.access_key_id = config.access_key_id
        sdk.access_key_secret = config.access_key_secret
    else:
        sdk.credential = CredentialClient()
    return sdk


def _transport_code(exc: BaseException | None) -> str:
    """`Network.<what broke>`; an unforeseen failure keeps its exception's name, and
    `maybe_applied` then treats it as sent."""
    chain = list(_chain(exc))
    for kind, code in _TRANSPORT_CODES:
        if any(isinstance(link, kind) for link in chain):
            return code
    return f"Network.{type(exc).__name__}"


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _one_line(exc: BaseException | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc else "unknown transport error"
    return " ".join(text.split())[:500]
