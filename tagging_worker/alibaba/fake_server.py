"""A fake `UpdateOutboundCallTags` endpoint that behaves like Alibaba Cloud's.

It checks signatures as the gateway does, answers in the API's own success and error shapes,
keeps the current tags per call and a log of what it was asked, and can be told (in process
or over `/_fake/` HTTP endpoints) to add latency, throttle, fail, refuse, stall, talk
nonsense, or apply a write after the client has given up on it. Fast enough not to measure
itself: keep-alive, TCP_NODELAY, a deep backlog and no per-request logging unless asked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tagging_worker.alibaba.signature import verify_acs3, verify_rpc_v2
from tagging_worker.errors import SignatureError

ACTION = "UpdateOutboundCallTags"
VERSION = "2025-11-27"
HOST_ID = "thirdswaicall.aliyuncs.com"
NONCE_WINDOW_SECONDS = 900
FAULT_KINDS = (
    "latency",
    "throttle",
    "error",
    "success_false",
    "stall",
    "close",
    "garbage",
    "late_apply",
)
LATE_ANSWERS = ("hang", "504", "close")

log = logging.getLogger(__name__)


@dataclass
class Fault:
    """One injected behaviour. `times` (use up) or `probability` (dice) limit it; `call_id`
    narrows it to one call. Kinds: latency, throttle, error, success_false (in `where`:
    "top" or "data"), stall (hold `seconds`, or until released), close (drop the connection),
    garbage (an HTML 502 page, as a proxy would send), late_apply (see `answer`)."""

    kind: str
    call_id: str | None = None
    times: int | None = None
    probability: float | None = None
    sticky: bool = False
    """With `probability`: roll the dice on the request's content (CallId and Tags) instead
    of at random, so the same request always meets the same answer, as it would with a
    real API's validation (a permanent error is a property of the request)."""
    code: str = "InternalError"
    http_status: int = 500
    message: str = "The request processing has failed due to some unknown error."
    retry_after_ms: int | None = None
    latency_ms: float = 0.0
    seconds: float | None = None
    where: str = "top"
    answer: str = "hang"
    """late_apply: the write is accepted and lands `seconds` after receipt (or when released),
    while the client hears nothing useful: "hang" holds the connection until the write lands,
    then drops it (past the client's read timeout, the client gives up first); "504" answers
    a gateway timeout at once; "close" drops the connection at once. There is no idempotency
    token, so the client cannot tell any of these from a request that never landed."""
    id: int = 0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {FAULT_KINDS}, got {self.kind!r}")
        if self.answer not in LATE_ANSWERS:
            raise ValueError(f"answer must be one of {LATE_ANSWERS}, got {self.answer!r}")
        if self.seconds is not None and self.seconds < 0:
            raise ValueError(f"seconds must not be negative, got {self.seconds!r}")
        if self.kind == "throttle":
            self.code, self.http_status = "Throttling.User", 400
            self.message = "Request was denied due to user flow control."


@dataclass
class LoggedCall:
    seq: int
    at: float
    call_id: str | None
    tags: list[str] | None
    answer: str
    access_key_id: str


@dataclass
class _Answer:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    close: bool = False


class FakeAlibabaApi:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: dict[str, str] | None = None,
        *,
        check_clock: bool = True,
        latency_ms: float = 0.0,
        verbose: bool = False,
    ) -> None:
        self._credentials = dict(credentials or {"fake-access-key-id": "fake-access-key-secret"})
        self.check_clock = check_clock
        self.latency_ms = latency_ms
        self.verbose = verbose
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._tags: dict[str, list[str]] = {}
        self._log: list[LoggedCall] = []
        self._counters: Counter[str] = Counter()
        self._faults: list[Fault] = []
        self._next_fault_id = 1
        self._nonces: dict[str, float] = {}
        self._nonce_order: deque[tuple[float, str]] = deque()
        self._quota_qps: float | None = None
        self._window: deque[float] = deque()
        self._late_cancelled = threading.Event()
        self._late_pending: set[threading.Event] = set()
        self._server = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None

    # lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"{self._server.server_address[0]}:{self.port}"

    def start(self) -> FakeAlibabaApi:
        self._thread = threading.Thread(target=self.serve_forever, name="fake-api", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def stop(self) -> None:
        """Pending late writes are dropped, so nothing lands on a stopped API."""
        self._cancel_late_applies()
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeAlibabaApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # control ---------------------------------------------------------------------------

    def add_fault(self, kind: str, **options: Any) -> int:
        fault = Fault(kind=kind, **options)
        with self._lock:
            fault.id = self._next_fault_id
            self._next_fault_id += 1
            self._faults.append(fault)
        if kind in ("stall", "late_apply") and fault.seconds is None:
            self._released.clear()
        return fault.id

    def clear_faults(self) -> None:
        """Writes already accepted by a late_apply still land: the API has them."""
        with self._lock:
            self._faults.clear()
        self._released.set()

    def release_stalls(self) -> None:
        self._released.set()

    def set_quota(self, qps: float | None) -> None:
        with self._lock:
            self._quota_qps = qps
            self._window.clear()

    def set_credentials(self, credentials: dict[str, str]) -> None:
        """Replace the accepted keys, e.g. to act out a key rotation."""
        with self._lock:
            self._credentials = dict(credentials)

    def reset(self) -> None:
        """Also drops pending late writes, so none lands on the fresh state."""
        self._cancel_late_applies()
        with self._lock:
            self._tags.clear()
            self._log.clear()
            self._counters.clear()
            self._faults.clear()
            self._quota_qps = None
        self._released.set()

    # observation -----------------------------------------------------------------------

    def tags_of(self, call_id: str) -> list[str] | None:
        with self._lock:
            tags = self._tags.get(call_id)
            return list(tags) if tags is not None else None

    def all_tags(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: list(v) for k, v in self._tags.items()}

    def calls(self) -> list[LoggedCall]:
        """Every signed UpdateOutboundCallTags request, in the order the API acted on them: a
        late_apply is logged ("OK-LATE") when its write lands, not when it arrived."""
        with self._lock:
            return list(self._log)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def wait_late_applies(self, timeout: float) -> bool:
        """Whether every late write accepted so far has landed (or been dropped) in time."""
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = list(self._late_pending)
        return all(settled.wait(max(0.0, deadline - time.monotonic())) for settled in pending)

    # request handling ------------------------------------------------------------------

    def _lookup_secret(self, access_key_id: str) -> str | None:
        with self._lock:
            return self._credentials.get(access_key_id)

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Answer:
        request_id = str(uuid.uuid4()).upper()
        url = urlsplit(target)
        query = parse_qsl(url.query, keep_blank_values=True)
        now = datetime.now(timezone.utc) if self.check_clock else None
        try:
            if any(k == "SignatureMethod" for k, _ in query):
                access_key_id = verify_rpc_v2(method, dict(query), self._lookup_secret, now=now)
                nonce = dict(query).get("SignatureNonce", "")
            else:
                access_key_id = verify_acs3(
                    method, url.path, query, headers, body, self._lookup_secret, now=now
                )
                nonce = headers.get("x-acs-signature-nonce", "")
            self._check_nonce(nonce)
        except SignatureError as exc:
            self._count(exc.code)
            return _error(exc.http_status, exc.code, exc.message, request_id)

        params = {**_body_params(headers, body), **dict(query)}
        action = headers.get("x-acs-action") or params.get("Action")
        version = headers.get("x-acs-version") or params.get("Version")
        if action != ACTION:
            return self._refuse(
                404,
                "InvalidAction.NotFound",
                f"Specified api is not found, please check your url and method. ({action})",
                request_id,
                params,
                access_key_id,
            )
        if version != VERSION:
            return self._refuse(
                400,
                "InvalidVersion",
                f"Specified parameter Version is not valid. ({version})",
                request_id,
                params,
                access_key_id,
            )
        if self._over_quota():
            fault = Fault(kind="throttle")
            return self._apply(fault, request_id, params, access_key_id)
        fault = self._pick_fault(params.get("CallId"), params.get("Tags", ""))
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if fault is not None:
            if fault.kind == "latency":
                time.sleep(fault.latency_ms / 1000)
            else:
                return self._apply(fault, request_id, params, access_key_id)
        return self._update(params, request_id, access_key_id)

    def _update(self, params: dict[str, str], request_id: str, access_key_id: str) -> _Answer:
        checked = self._checked(params, request_id, access_key_id)
        if isinstance(checked, _Answer):
            return checked
        call_id, tags = checked
        with self._lock:
            self._tags[call_id] = tags
            self._record(call_id, tags, "OK", access_key_id)
        return _Answer(
            200,
            {
                "RequestId": request_id,
                "Success": True,
                "Code": None,
                "Message": "操作成功",
                "Data": {"Success": True, "Message": "标签更新成功"},
            },
        )

    def _checked(
        self, params: dict[str, str], request_id: str, access_key_id: str
    ) -> tuple[str, list[str]] | _Answer:
        """The call and its tags, or the refusal the API answers for a malformed request."""
        call_id = params.get("CallId")
        if not call_id:
            return self._refuse(
                400,
                "MissingCallId",
                _missing("CallId"),
                request_id,
                params,
                access_key_id,
            )
        if "Tags" not in params:
            return self._refuse(
                400,
                "MissingTags",
                _missing("Tags"),
                request_id,
                params,
                access_key_id,
            )
        tags = _parse_tags(params["Tags"])
        if tags is None:
            return self._refuse(
                400,
                "InvalidParameter.Tags",
                "The parameter Tags must be a JSON array of strings.",
                request_id,
                params,
                access_key_id,
            )
        return call_id, tags

    def _late_apply(
        self, fault: Fault, request_id: str, params: dict[str, str], access_key_id: str
    ) -> _Answer:
        checked = self._checked(params, request_id, access_key_id)
        if isinstance(checked, _Answer):
            return checked
        landed = self._apply_later(fault.seconds, *checked, access_key_id)
        if fault.answer == "504":
            return _error(
                504, "GatewayTimeout", "The request timed out at the gateway.", request_id
            )
        if fault.answer == "hang":
            landed.wait()
        return _Answer(0, close=True)

    def _apply_later(
        self, seconds: float | None, call_id: str, tags: list[str], access_key_id: str
    ) -> threading.Event:
        """Lands the write from a thread of its own, so it happens whatever became of the
        request's connection; returns an event set once it has landed or been dropped."""
        settled = threading.Event()
        with self._lock:
            cancelled = self._late_cancelled
            self._late_pending.add(settled)

        def land() -> None:
            try:
                if seconds is None:
                    self._released.wait()
                else:
                    cancelled.wait(seconds)
                with self._lock:
                    if not cancelled.is_set():
                        self._tags[call_id] = tags
                        self._record(call_id, tags, "OK-LATE", access_key_id)
                    self._late_pending.discard(settled)
            finally:
                settled.set()

        threading.Thread(target=land, name="fake-api-late-apply", daemon=True).start()
        return settled

    def _cancel_late_applies(self) -> None:
        """Pending writes check the event they were born with under the lock before landing,
        so none of them lands after this; callers also set `_released` to wake the rest."""
        with self._lock:
            self._late_cancelled.set()
            self._late_cancelled = threading.Event()

    def _apply(
        self, fault: Fault, request_id: str, params: dict[str, str], access_key_id: str
    ) -> _Answer:
        if fault.kind == "late_apply":
            return self._late_apply(fault, request_id, params, access_key_id)
        if fault.kind == "stall":
            if fault.seconds is not None:
                time.sleep(fault.seconds)
            else:
                self._released.wait()
            return self._update(params, request_id, access_key_id)
        self._log_fault(fault, params, access_key_id)
        if fault.kind == "close":
            return _Answer(0, close=True)
        if fault.kind == "garbage":
            page = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            return _Answer(502, raw=page, headers={"content-type": "text/html"})
        if fault.kind == "success_false":
            refusal = {"Success": False, "Code": fault.code, "Message": fault.message}
            if fault.where == "data":
                body = {
                    "RequestId": request_id,
                    "Success": True,
                    "Code": None,
                    "Message": "操作成功",
                    "Data": refusal,
                }
            else:
                body = {"RequestId": request_id, **refusal, "Data": None}
            return _Answer(200, body)
        answer = _error(fault.http_status, fault.code, fault.message, request_id)
        if fault.retry_after_ms:
            answer.headers["x-acs-retry-after"] = str(fault.retry_after_ms)
        return answer

    def _refuse(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str,
        params: dict[str, str],
        access_key_id: str,
    ) -> _Answer:
        with self._lock:
            self._record(
                params.get("CallId"), _parse_tags(params.get("Tags", "")), code, access_key_id
            )
        return _error(status, code, message, request_id)

    def _log_fault(self, fault: Fault, params: dict[str, str], access_key_id: str) -> None:
        answer = {"close": "ConnectionClosed", "garbage": "BadGateway"}.get(fault.kind, fault.code)
        with self._lock:
            self._record(
                params.get("CallId"), _parse_tags(params.get("Tags", "")), answer, access_key_id
            )

    def _record(
        self, call_id: str | None, tags: list[str] | None, answer: str, access_key_id: str
    ) -> None:
        self._log.append(
            LoggedCall(len(self._log) + 1, time.time(), call_id, tags, answer, access_key_id)
        )
        self._counters["total"] += 1
        self._counters[answer] += 1

    def _count(self, code: str) -> None:
        with self._lock:
            self._counters[code] += 1

    def _check_nonce(self, nonce: str) -> None:
        now = time.monotonic()
        with self._lock:
            while self._nonce_order and self._nonce_order[0][0] < now - NONCE_WINDOW_SECONDS:
                self._nonces.pop(self._nonce_order.popleft()[1], None)
            if nonce in self._nonces:
                raise SignatureError(
                    "SignatureNonceUsed", "Specified signature nonce was used already."
                )
            if nonce:
                self._nonces[nonce] = now
                self._nonce_order.append((now, nonce))

    def _over_quota(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if self._quota_qps is None:
                return False
            while self._window and self._window[0] <= now - 1.0:
                self._window.popleft()
            if len(self._window) >= self._quota_qps:
                return True
            self._window.append(now)
            return False

    def _pick_fault(self, call_id: str | None, tags: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.call_id is not None and fault.call_id != call_id:
                    continue
                if (
                    fault.probability is not None
                    and _roll(fault, call_id, tags) >= fault.probability
                ):
                    continue
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    # the /_fake/ control endpoints ----------------------------------------------------

    def control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        try:
            payload = json.loads(body) if body else {}
        except (ValueError, RecursionError) as exc:  # a UnicodeDecodeError is a ValueError
            return 400, {"error": f"the body is not JSON: {exc}"}
        parts = path.strip("/").split("/")[1:]
        match method, parts:
            case "GET", ["state"]:
                return 200, {"tags": self.all_tags(), "counters": self.counters()}
            case "GET", ["calls", call_id]:
                tags = self.tags_of(call_id)
                return (
                    (404, {"error": "unknown call"})
                    if tags is None
                    else (200, {"call_id": call_id, "tags": tags})
                )
            case "GET", ["log"]:
                return 200, [asdict(c) for c in self.calls()]
            case "GET", ["faults"]:
                with self._lock:
                    return 200, [asdict(f) for f in self._faults]
            case "POST", ["faults"]:
                if not isinstance(payload, dict):
                    return 400, {"error": 'a fault is a JSON object, e.g. {"kind": "throttle"}'}
                try:
                    return 200, {"id": self.add_fault(**payload)}
                except (TypeError, ValueError) as exc:
                    return 400, {"error": str(exc)}
            case "DELETE", ["faults"]:
                self.clear_faults()
                return 200, {}
            case "POST", ["release"]:
                self.release_stalls()
                return 200, {}
            case "POST", ["quota"]:
                self.set_quota(payload.get("qps"))
                return 200, {}
            case "POST", ["credentials"]:
                self.set_credentials(payload)
                return 200, {}
            case "POST", ["reset"]:
                self.reset()
                return 200, {}
        return 404, {"error": f"no control endpoint {method} {path}"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address


def _handler_for(api: FakeAlibabaApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-alibaba-cloud"

        def _read_body(self) -> bytes:
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _handle(self) -> None:
            body = self._read_body()
            if self.path.startswith("/_fake/"):
                status, payload = api.control(self.command, urlsplit(self.path).path, body)
                self._send(status, json.dumps(payload, ensure_ascii=False).encode(), {})
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = api.answer(self.command, self.path, headers, body)
            if answer.close:
                self.close_connection = True
                with contextlib.suppress(OSError):  # the client may have hung up first
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            data = (
                answer.raw
                if answer.raw is not None
                else json.dumps(answer.body, ensure_ascii=False).encode()
            )
            extra = {"content-type": "application/json;charset=utf-8", **answer.headers}
            self._send(answer.status, data, extra)

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            headers.setdefault("content-type", "application/json;charset=utf-8")
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up waiting (a stall outlasted it)

        do_GET = do_POST = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            if api.verbose:
                log.info("%s - %s", self.address_string(), format % args)

    return Handler


def _roll(fault: Fault, call_id: str | None, tags: str) -> float:
    if not fault.sticky:
        return random.random()
    digest = hashlib.sha256(f"{fault.id}|{call_id}|{tags}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _error(status: int, code: str, message: str, request_id: str) -> _Answer:
    return _Answer(
        status,
        {
            "RequestId": request_id,
            "HostId": HOST_ID,
            "Code": code,
            "Message": message,
            "Recommend": f"https://api.aliyun.com/troubleshoot?q={code}&product=ThirdSwaiCall&requestId={request_id}",
        },
    )


def _body_params(headers: dict[str, str], body: bytes) -> dict[str, str]:
    if not body:
        return {}
    content_type = headers.get("content-type", "")
    try:
        if "json" in content_type:
            parsed = json.loads(body)
            return {k: v if isinstance(v, str) else json.dumps(v) for k, v in parsed.items()}
        return dict(parse_qsl(body.decode(), keep_blank_values=True))
    except (ValueError, AttributeError):
        return {}


def _missing(name: str) -> str:
    return (
        f'The input parameter "{name}" that is mandatory for processing this request '
        "is not supplied."
    )


def _parse_tags(text: str) -> list[str] | None:
    try:
        tags = json.loads(text)
    except ValueError:
        return None
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return None
    return tags


def run(
    host: str,
    port: int,
    access_key_id: str,
    access_key_secret: str,
    latency_ms: float,
    check_clock: bool,
    verbose: bool,
) -> None:
    """The `tagging-worker fake-api` command."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    api = FakeAlibabaApi(
        host,
        port,
        {access_key_id: access_key_secret},
        check_clock=check_clock,
        latency_ms=latency_ms,
        verbose=verbose,
    )
    log.info(
        "fake Alibaba Cloud API on http://%s (access key id %s); control under /_fake/",
        api.endpoint,
        access_key_id,
    )
    with contextlib.suppress(KeyboardInterrupt):
        api.serve_forever()
