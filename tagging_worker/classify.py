"""Alibaba Cloud error codes -> what to do about them (pure, a table of data).

By code first and HTTP status second: throttling usually arrives as HTTP 400 with a
`Throttling*` code, so the status alone would call it permanent.
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
        if pattern.endswith("*"):
            hit = code.startswith(pattern[:-1])
            weight = len(pattern) - 1
        else:
            hit = code == pattern
            weight = 1 << 30  # an exact code beats any prefix
        if hit:
            if not longest:
                return kind
            if best is None or weight > best[0]:
                best = (weight, kind)
    return best[1] if best else None


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
