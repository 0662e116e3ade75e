"""The SDK wrapper against the fake API and raw loopback sockets: every way the API can
answer, or fail to, becomes one result that says whether the write may still have landed."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tagging_worker.alibaba.api import TagsApi
from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.alibaba.results import ApiFailure, ApiSuccess
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
    return TagsApi(load_settings(**settings).api_config())


def _raw_client(port: int) -> TagsApi:
    return TagsApi(
        load_settings(
            api_endpoint=f"127.0.0.1:{port}",
            api_protocol="http",
            access_key_id=ACCESS_KEY_ID,
            access_key_secret=ACCESS_KEY_SECRET,
            api_connect_timeout_ms=300,
            api_read_timeout_ms=300,
        ).api_config()
    )


@contextlib.contextmanager
def _raw_server(reply: bytes | None) -> Iterator[int]:
    """A loopback port that reads one request, then sends `reply` as is and hangs up, or
    with None never answers until the test is over."""
    done = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        with contextlib.suppress(OSError), listener.accept()[0] as conn:
            conn.recv(65536)
            if reply is None:
                done.wait()
            else:
                conn.sendall(reply)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        server.join(5)
        listener.close()


@contextlib.contextmanager
def _full_listener() -> Iterator[int]:
    """A loopback port whose accept queue is full: the kernel drops new handshakes, so
    connecting times out, as against a host that does not answer."""
    with socket.create_server(("127.0.0.1", 0), backlog=0) as listener:
        port = listener.getsockname()[1]
        fillers: list[socket.socket] = []
        try:
            for _ in range(64):
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.2)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            else:
                pytest.fail("the accept queue never filled up")
            yield port
        finally:
            for filler in fillers:
                filler.close()


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_success_stores_the_tags_as_sent(fake_api: FakeAlibabaApi) -> None:
    result = _client(fake_api).update_tags("call-1", '["有意向","需跟进"]')

    assert isinstance(result, ApiSuccess) and result.request_id
    assert fake_api.tags_of("call-1") == ["有意向", "需跟进"]


@pytest.mark.parametrize(
    ("fault", "kind", "code", "status", "maybe"),
    [
        ({"kind": "throttle"}, Q, "Throttling.User", 400, False),
        (
            {"kind": "error", "code": "ServiceUnavailable", "http_status": 503},
            T,
            "ServiceUnavailable",
            503,
            True,
        ),
        (
            {"kind": "error", "code": "InternalError", "http_status": 500},
            T,
            "InternalError",
            500,
            True,
        ),
        (
            {"kind": "error", "code": "InvalidParameter", "http_status": 400},
            P,
            "InvalidParameter",
            400,
            False,
        ),
        (
            {"kind": "error", "code": "Forbidden.RAM", "http_status": 403},
            S,
            "Forbidden.RAM",
            403,
            False,
        ),
        (
            {"kind": "error", "code": "InsufficientBalance", "http_status": 400},
            S,
            "InsufficientBalance",
            400,
            False,
        ),
        (
            {"kind": "success_false", "code": "InvalidParameter.CallId"},
            P,
            "InvalidParameter.CallId",
            200,
            False,
        ),
        (
            {"kind": "success_false", "code": "Throttling.User", "where": "data"},
            Q,
            "Throttling.User",
            200,
            False,
        ),
    ],
)
def test_error_answers_are_classified_with_code_status_request_id_and_maybe_applied(
    fake_api: FakeAlibabaApi,
    fault: dict[str, Any],
    kind: FailureKind,
    code: str,
    status: int,
    maybe: bool,
) -> None:
    fake_api.add_fault(**fault)

    result = _client(fake_api).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.http_status) == (kind, code, status)
    assert result.maybe_applied is maybe
    assert result.request_id
    assert fake_api.tags_of("call-1") is None


def test_throttling_with_retry_after_carries_the_hint_in_seconds(fake_api: FakeAlibabaApi) -> None:
    fake_api.add_fault("throttle", retry_after_ms=1500)

    result = _client(fake_api).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure) and result.retry_after == 1.5


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"kind": "close"}, "Network.ConnectionReset"),
        ({"kind": "garbage"}, "Network.UnparsableResponse"),
        ({"kind": "stall", "seconds": 0.6}, "Network.ReadTimeout"),
    ],
    ids=["connection-dropped", "non-json-body", "read-timeout"],
)
def test_transport_failures_after_sending_are_transient_and_maybe_applied(
    fake_api: FakeAlibabaApi, fault: dict[str, Any], code: str
) -> None:
    fake_api.add_fault(**fault)

    result = _client(fake_api).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.http_status) == (T, code, None)
    assert result.maybe_applied


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (b"", "Network.ConnectionReset"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 90\r\n\r\n"
            b'{"RequestId": "R',
            "Network.ConnectionReset",
        ),
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b'transfer-encoding: chunked\r\n\r\n5\r\n{"Req\r\n',
            "Network.ConnectionReset",
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 12\r\n\r\n"
            b"<h1>502</h1>",
            "Network.UnparsableResponse",
        ),
        (None, "Network.ReadTimeout"),
    ],
    ids=["closed-unanswered", "body-cut-short", "chunks-cut-short", "html-502", "no-answer"],
)
def test_a_request_that_reached_a_socket_may_have_been_applied(
    reply: bytes | None, code: str
) -> None:
    with _raw_server(reply) as port:
        result = _raw_client(port).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.http_status) == (T, code, None)
    assert result.maybe_applied


def test_a_refused_connection_is_transient_and_never_applied() -> None:
    result = _raw_client(_free_port()).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.maybe_applied) == (
        T,
        "Network.ConnectionRefused",
        False,
    )


def test_a_connect_timeout_is_transient_and_never_applied() -> None:
    with _full_listener() as port:
        result = _raw_client(port).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.maybe_applied) == (T, "Network.ConnectTimeout", False)


def test_a_name_that_does_not_resolve_is_transient_and_never_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolve = socket.getaddrinfo

    def no_such_host(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "api.tagging-worker.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    settings = load_settings(
        api_endpoint="api.tagging-worker.invalid",
        api_protocol="http",
        access_key_id=ACCESS_KEY_ID,
        access_key_secret=ACCESS_KEY_SECRET,
    )

    result = TagsApi(settings.api_config()).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.maybe_applied) == (T, "Network.NameResolution", False)


@pytest.mark.parametrize(
    ("answer", "code", "status"),
    [
        ("hang", "Network.ReadTimeout", None),
        ("504", "GatewayTimeout", 504),
        ("close", "Network.ConnectionReset", None),
    ],
)
def test_a_write_the_api_applies_late_is_reported_as_maybe_applied(
    fake_api: FakeAlibabaApi, answer: str, code: str, status: int | None
) -> None:
    fake_api.add_fault("late_apply", answer=answer)

    result = _client(fake_api).update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.http_status) == (T, code, status)
    assert result.maybe_applied


def test_wrong_secret_is_systemic_signature_does_not_match(fake_api: FakeAlibabaApi) -> None:
    result = _client(fake_api, access_key_secret="wrong").update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.maybe_applied) == (S, "SignatureDoesNotMatch", False)


def test_unknown_access_key_is_systemic(fake_api: FakeAlibabaApi) -> None:
    result = _client(fake_api, access_key_id="nobody").update_tags("call-1", '["a"]')

    assert isinstance(result, ApiFailure)
    assert (result.kind, result.code, result.http_status) == (S, "InvalidAccessKeyId.NotFound", 404)
    assert not result.maybe_applied


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
    assert (result.kind, result.code, result.maybe_applied) == (S, "InvalidCredentials", False)
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
