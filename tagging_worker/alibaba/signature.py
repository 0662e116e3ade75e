"""Server-side checks of Alibaba Cloud request signatures (pure, no I/O).

The fake API must refuse what the real gateway refuses, or tests would pass with a client
that signs wrongly. Both schemes are here: ACS3-HMAC-SHA256 (the SDK's default) and the
legacy RPC HMAC-SHA1 query signature (`Config.signature_algorithm == 'v2'`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from urllib.parse import quote

from tagging_worker.errors import SignatureError

ACS3 = "ACS3-HMAC-SHA256"
_AUTH = re.compile(
    r"^(?P<alg>\S+)\s+Credential=(?P<ak>[^,]*),SignedHeaders=(?P<sh>[^,]*),Signature=(?P<sig>[0-9a-fA-F]+)$"
)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

SecretLookup = Callable[[str], "str | None"]


def verify_acs3(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    headers: Mapping[str, str],
    body: bytes,
    lookup_secret: SecretLookup,
    *,
    now: datetime | None,
    max_skew_seconds: int = 900,
) -> str:
    """Check an ACS3-HMAC-SHA256 request; returns the access key id it was signed with."""
    lower = {k.lower(): v for k, v in headers.items()}
    match = _AUTH.match(lower.get("authorization", "").strip())
    if match is None:
        raise SignatureError(
            "IncompleteSignature", "The Authorization header is missing or malformed."
        )
    if match["alg"] != ACS3:
        raise SignatureError(
            "IncompleteSignature", f"Unsupported signature algorithm {match['alg']}."
        )
    signed = match["sh"].split(";")
    required = {"host", *(k for k in lower if k.startswith("x-acs-") and k != "x-acs-signature")}
    missing = sorted(required - set(signed))
    if missing or any(h not in lower for h in signed):
        raise SignatureError(
            "IncompleteSignature",
            f"SignedHeaders must include {', '.join(missing) or 'only sent headers'}.",
        )
    payload_hash = hashlib.sha256(body).hexdigest()
    if lower.get("x-acs-content-sha256", "") != payload_hash:
        raise SignatureError(
            "SignatureDoesNotMatch", "x-acs-content-sha256 does not match the request body."
        )
    secret = lookup_secret(match["ak"])
    if secret is None:
        raise SignatureError(
            "InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404
        )
    _check_clock(lower.get("x-acs-date", ""), now, max_skew_seconds)
    canonical = "\n".join(
        (
            method.upper(),
            path or "/",
            _canonical_query(query),
            "".join(f"{h}:{lower[h].strip()}\n" for h in signed),
            ";".join(signed),
            payload_hash,
        )
    )
    to_sign = f"{ACS3}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    expected = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match["sig"].lower()):
        raise SignatureError(
            "SignatureDoesNotMatch",
            "Specified signature does not match our calculation. "
            f"The expected StringToSign is {to_sign!r}.",
        )
    return match["ak"]


def verify_rpc_v2(
    method: str,
    query: Mapping[str, str],
    lookup_secret: SecretLookup,
    *,
    now: datetime | None,
    max_skew_seconds: int = 900,
) -> str:
    """Check a legacy RPC (HMAC-SHA1, signature in the query) request."""
    if "Signature" not in query or "AccessKeyId" not in query:
        raise SignatureError("IncompleteSignature", "Signature and AccessKeyId are required.")
    if query.get("SignatureMethod", "HMAC-SHA1") != "HMAC-SHA1":
        raise SignatureError("IncompleteSignature", "Only SignatureMethod HMAC-SHA1 is supported.")
    secret = lookup_secret(query["AccessKeyId"])
    if secret is None:
        raise SignatureError(
            "InvalidAccessKeyId.NotFound", "Specified access key is not found.", 404
        )
    _check_clock(query.get("Timestamp", ""), now, max_skew_seconds)
    canonical = _canonical_query([(k, v) for k, v in query.items() if k != "Signature"])
    to_sign = f"{method.upper()}&{_encode('/')}&{_encode(canonical)}"
    digest = hmac.new(f"{secret}&".encode(), to_sign.encode(), hashlib.sha1).digest()
    if not hmac.compare_digest(base64.b64encode(digest).decode(), query["Signature"]):
        raise SignatureError(
            "SignatureDoesNotMatch", "Specified signature does not match our calculation."
        )
    return query["AccessKeyId"]


def _canonical_query(pairs: list[tuple[str, str]]) -> str:
    """Keys sorted, keys and values percent-encoded by RFC 3986 (space is %20, `~` kept)."""
    return "&".join(f"{_encode(k)}={_encode(v)}" for k, v in sorted(pairs))


def _encode(text: str) -> str:
    return quote(text, safe="~")


def _check_clock(stamp: str, now: datetime | None, max_skew_seconds: int) -> None:
    if now is None:
        return
    try:
        sent = datetime.strptime(stamp, _TIME_FORMAT).replace(tzinfo=timezone.utc)
    except ValueError:
        raise SignatureError("InvalidTimeStamp.Format", f"Bad timestamp {stamp!r}.") from None
    if abs((now - sent).total_seconds()) > max_skew_seconds:
        raise SignatureError(
            "InvalidTimeStamp.Expired",
            f"Specified time stamp or date value is expired (sent {stamp}).",
        )
