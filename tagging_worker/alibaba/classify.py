"""Alibaba Cloud error codes -> what to do about them (pure, tables of data).

By code first and HTTP status second: throttling usually arrives as HTTP 400 with a
`Throttling*` code, so the status alone would call it permanent. Separately, whether a failed
request may still have been applied: the API has no idempotency token, so a request we gave
up on can land later.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum


class FailureKind(str, Enum):
    THROTTLED = "throttled"
    """Over the account's quota: slow everyone down and try again; not the event's fault."""
    TRANSIENT = "transient"
    """Try again later: the same call can succeed."""
    PERMANENT = "permanent"
    """This event can never succeed as it is: dead-letter it."""
    SYSTEMIC = "systemic"
    """The set-up is broken (credentials, permissions, clock, balance), not the event."""


Q, T = FailureKind.THROTTLED, FailureKind.TRANSIENT
P, S = FailureKind.PERMANENT, FailureKind.SYSTEMIC

# First match wins; a pattern ending in `*` matches by prefix. Specific systemic `Invalid*`
# codes stand before the generic permanent `Invalid*`.
CODE_TABLE: tuple[tuple[str, FailureKind], ...] = (
    ("Throttling*", Q),
    ("ServiceUnavailable*", T),
    ("InternalError*", T),
    ("SignatureNonceUsed", T),
    ("RequestTimeout", T),
    ("Network.*", T),
    ("InvalidResponse", T),
    ("InvalidAccessKeyId*", S),
    ("InvalidAccessKeySecret*", S),
    ("InvalidSecurityToken*", S),
    ("InvalidCredentials", S),
    ("InvalidTimeStamp.Expired", S),
    ("SignatureDoesNotMatch", S),
    ("IncompleteSignature", S),
    ("Forbidden*", S),
    ("NoPermission*", S),
    ("InsufficientBalance", S),
    ("MissingParameter*", P),
    ("Missing*", P),
    ("InvalidParameter*", P),
    ("Invalid*", P),
)


# Failures that prove the API did not act on the request: it never left this host (the
# transport codes api.py gives to failures while connecting, missing credentials), or the
# gateway turned it away before the API saw it, whatever HTTP status that came with.
NOT_APPLIED: tuple[str, ...] = (
    "Network.NameResolution",
    "Network.ConnectionRefused",
    "Network.ConnectError",
    "Network.ConnectTimeout",
    "InvalidCredentials",
    "Throttling*",
    "SignatureNonceUsed",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "InvalidAccessKeyId*",
    "InvalidAccessKeySecret*",
    "InvalidSecurityToken*",
    "InvalidTimeStamp*",
    "Forbidden*",
    "NoPermission*",
)


def classify(
    code: str | None,
    http_status: int | None,
    *,
    overrides: Mapping[str, FailureKind] | None = None,
) -> FailureKind:
    if code:
        if overrides:
            found = _match(code, overrides.items(), longest=True)
            if found is not None:
                return found
        found = _match(code, CODE_TABLE, longest=False)
        if found is not None:
            return found
    return _by_status(http_status)


def maybe_applied(code: str | None, http_status: int | None) -> bool:
    """Whether a request that failed like this may still have been applied by the API.

    When in doubt, yes: a false yes costs one extra check-and-repair write, a false no lets a
    late write of old tags stand over newer ones. So no HTTP status (timeouts, connections
    dropped after sending, unreadable bodies), a 5xx or any other odd status count as maybe,
    unless the code proves the request was never acted on; a 4xx, or a 200 with
    `Success: false`, is the API saying no.
    """
    if code and any(_hits(code, pattern) for pattern in NOT_APPLIED):
        return False
    if code == "InvalidResponse" or http_status is None:
        return True
    said_no = 200 <= http_status < 300 or 400 <= http_status < 500
    return not said_no


def parse_overrides(spec: Mapping[str, str | FailureKind]) -> dict[str, FailureKind]:
    """Settings-side: {"Custom.Busy": "transient", "Foo.*": "permanent"}."""
    parsed: dict[str, FailureKind] = {}
    for code, kind in spec.items():
        if not isinstance(code, str) or not code or code == "*":
            raise ValueError(f"error code {code!r} must be a non-empty code or prefix*")
        try:
            parsed[code] = FailureKind(kind)
        except ValueError:
            allowed = ", ".join(k.value for k in FailureKind)
            raise ValueError(
                f"error code {code!r}: kind {kind!r} is not one of {allowed}"
            ) from None
    return parsed


def _match(
    code: str, table: Iterable[tuple[str, FailureKind]], *, longest: bool
) -> FailureKind | None:
    best: tuple[int, FailureKind] | None = None
    for pattern, kind in table:
        if _hits(code, pattern):
            if not longest:
                return kind
            weight = len(pattern) - 1 if pattern.endswith("*") else 1 << 30  # exact beats prefix
            if best is None or weight > best[0]:
                best = (weight, kind)
    return best[1] if best else None


def _hits(code: str, pattern: str) -> bool:
    return code.startswith(pattern[:-1]) if pattern.endswith("*") else code == pattern


def _by_status(http_status: int | None) -> FailureKind:
    if http_status == 429:
        return Q
    if http_status is None or http_status >= 500:
        return T
    if http_status in (401, 403):
        return S
    if 400 <= http_status < 500:
        return P
    # HTTP 200 that said `Success: false` with a code we do not know: the API looked at the
    # request and refused it, so sending it again will not help.
    return P
