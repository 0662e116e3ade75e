"""`tagging-worker doctor` proves the set-up with a signed request the API must refuse on its
merits, and names what is wrong otherwise: the endpoint, the signature, the RAM permission or
the clock, each in one line with a hint and exit 1."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tagging_worker.alibaba import fake_server
from tagging_worker.alibaba.api import CHECK_CALL_ID, SetupProblem, diagnose
from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.fake_server import FakeAlibabaApi
from tagging_worker.alibaba.results import ApiFailure, ApiResult, ApiSuccess
from tests.conftest import free_port, run_cli

RID = "5F2C1C1E-0000-4000-8000-000000000000"


def _doctor(env: dict[str, str]) -> tuple[int, list[str]]:
    result = run_cli({**env, "COLUMNS": "80"}, "doctor")
    return result.returncode, result.stdout.splitlines()


def _failures(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("FAIL")]


def test_doctor_passes_when_the_api_answers_a_signed_request_on_its_merits(
    worker_env: dict[str, str], fake_api: FakeAlibabaApi
) -> None:
    code, lines = _doctor(worker_env)

    assert code == 0, lines
    assert _failures(lines) == []
    assert any("answered a signed request on its merits" in line for line in lines), lines
    (call,) = fake_api.calls()
    assert (call.call_id, call.answer) == (CHECK_CALL_ID, "InvalidParameter.Tags")
    assert fake_api.all_tags() == {}


@pytest.mark.parametrize(
    ("credentials", "says"),
    [
        ({"ACCESS_KEY_SECRET": "a-wrong-secret"}, "SignatureDoesNotMatch"),
        ({"ACCESS_KEY_ID": "an-unknown-key-id"}, "InvalidAccessKeyId.NotFound"),
    ],
    ids=["wrong secret", "unknown key id"],
)
def test_doctor_fails_wrong_credentials_in_one_line_naming_the_signature(
    worker_env: dict[str, str], credentials: dict[str, str], says: str
) -> None:
    code, lines = _doctor({**worker_env, **credentials})

    assert code == 1
    (failure,) = _failures(lines)
    assert failure.startswith("FAIL signature: the API refused the request's signature")
    assert says in failure and "check ACCESS_KEY_ID and ACCESS_KEY_SECRET" in failure


def test_doctor_names_a_missing_ram_permission(
    worker_env: dict[str, str], fake_api: FakeAlibabaApi
) -> None:
    fake_api.add_fault(
        "error",
        code="Forbidden.RAM",
        http_status=403,
        message="User not authorized to operate on the specified resource.",
    )

    code, lines = _doctor(worker_env)

    assert code == 1
    (failure,) = _failures(lines)
    assert failure.startswith("FAIL permission: the API refused the access key (Forbidden.RAM")
    assert "RAM user or role" in failure


class _AnHourAhead(datetime):
    @classmethod
    def now(cls, tz: object = None) -> datetime:
        return datetime.now(timezone.utc) + timedelta(hours=1)


def test_doctor_names_a_clock_out_of_step_with_the_api(
    worker_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake's clock an hour ahead of this host's: the API refuses the signed time."""
    monkeypatch.setattr(fake_server, "datetime", _AnHourAhead)

    code, lines = _doctor(worker_env)

    assert code == 1
    (failure,) = _failures(lines)
    assert failure.startswith("FAIL clock: the API says the request's time is off")
    assert "InvalidTimeStamp.Expired" in failure and "NTP" in failure


@contextlib.contextmanager
def _not_the_api(status: int, body: bytes, content_type: str) -> Iterator[str]:
    """Another HTTP service at the endpoint: it answers every request with `body`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (404, b"<html><body>Not Found</body></html>", "text/html"),
        (404, b'{"error": "no route"}', "application/json"),
        (200, b'{"ok": true}', "application/json"),
    ],
    ids=["html 404", "json 404", "json 200"],
)
def test_doctor_says_when_what_answers_at_the_endpoint_is_not_the_alibaba_api(
    worker_env: dict[str, str], status: int, body: bytes, content_type: str
) -> None:
    with _not_the_api(status, body, content_type) as endpoint:
        code, lines = _doctor({**worker_env, "TAGGING_API_ENDPOINT": endpoint})

    assert code == 1
    (failure,) = _failures(lines)
    assert failure.startswith(
        f"FAIL API endpoint: http://{endpoint} answered, but not as the Alibaba Cloud API does"
    )


def test_doctor_says_an_endpoint_nothing_listens_on_cannot_be_reached(
    worker_env: dict[str, str],
) -> None:
    endpoint = f"127.0.0.1:{free_port()}"

    code, lines = _doctor({**worker_env, "TAGGING_API_ENDPOINT": endpoint})

    assert code == 1
    (failure,) = _failures(lines)
    assert failure.startswith(f"FAIL API endpoint: cannot connect to {endpoint} over http")
    assert "Network.ConnectionRefused" in failure


def test_doctor_takes_an_endpoint_written_as_a_url(
    worker_env: dict[str, str], fake_api: FakeAlibabaApi
) -> None:
    """`TAGGING_API_ENDPOINT=http://127.0.0.1:PORT` alone: the scheme is the protocol."""
    env = {k: v for k, v in worker_env.items() if k != "TAGGING_API_PROTOCOL"}

    code, lines = _doctor({**env, "TAGGING_API_ENDPOINT": f"http://{fake_api.endpoint}"})

    assert code == 0, lines
    assert [call.answer for call in fake_api.calls()] == ["InvalidParameter.Tags"]


def _failure(
    code: str, http_status: int | None, kind: FailureKind, rid: str | None = RID
) -> ApiFailure:
    return ApiFailure(
        kind=kind, code=code, message="m", http_status=http_status, request_id=rid, duration=0
    )


P, S, T, Q = (
    FailureKind.PERMANENT,
    FailureKind.SYSTEMIC,
    FailureKind.TRANSIENT,
    FailureKind.THROTTLED,
)


@pytest.mark.parametrize(
    ("result", "problem"),
    [
        (_failure("InvalidParameter.Tags", 400, P), None),
        (_failure("CallNotFound", 404, P), None),
        (_failure("NotFound", 200, P), None),
        (ApiSuccess(request_id=RID, duration=0), None),
        (_failure("SignatureDoesNotMatch", 400, S), SetupProblem.SIGNATURE),
        (_failure("InvalidAccessKeyId.NotFound", 404, S), SetupProblem.SIGNATURE),
        (_failure("InvalidSecurityToken.Expired", 400, S), SetupProblem.SIGNATURE),
        (_failure("InvalidCredentials", None, S, rid=None), SetupProblem.SIGNATURE),
        (_failure("Unknown", 401, S), SetupProblem.SIGNATURE),
        (_failure("Forbidden.RAM", 403, S), SetupProblem.PERMISSION),
        (_failure("NoPermission", 403, S), SetupProblem.PERMISSION),
        (_failure("InvalidTimeStamp.Expired", 400, S), SetupProblem.CLOCK),
        (_failure("InsufficientBalance", 400, S), SetupProblem.ACCOUNT),
        (_failure("InvalidAction.NotFound", 404, P), SetupProblem.NOT_THE_API),
        (_failure("InvalidVersion", 400, P), SetupProblem.NOT_THE_API),
        (_failure("Unknown", 404, P, rid=None), SetupProblem.NOT_THE_API),
        (_failure("Network.UnparsableResponse", None, T, rid=None), SetupProblem.NOT_THE_API),
        (ApiSuccess(request_id=None, duration=0), SetupProblem.NOT_THE_API),
        (_failure("Network.ConnectionRefused", None, T, rid=None), SetupProblem.UNREACHABLE),
        (_failure("Network.NameResolution", None, T, rid=None), SetupProblem.UNREACHABLE),
        (_failure("Network.SSLError", None, T, rid=None), SetupProblem.UNREACHABLE),
        (_failure("Throttling.User", 400, Q), SetupProblem.UNAVAILABLE),
        (_failure("ServiceUnavailable", 503, T), SetupProblem.UNAVAILABLE),
        (_failure("Network.ReadTimeout", None, T, rid=None), SetupProblem.UNAVAILABLE),
    ],
    ids=lambda value: getattr(value, "code", None) or getattr(value, "value", None) or "ok",
)
def test_only_an_answer_on_the_merits_proves_the_set_up(
    result: ApiResult, problem: SetupProblem | None
) -> None:
    assert diagnose(result) is problem
