"""What one call to the API came to, already classified, so retry decisions never touch SDK
types (and modules that only read results never load the SDK)."""

from __future__ import annotations

from dataclasses import dataclass

from tagging_worker.alibaba.classify import FailureKind


@dataclass(frozen=True)
class ApiSuccess:
    request_id: str | None
    duration: float


@dataclass(frozen=True)
class ApiFailure:
    kind: FailureKind
    code: str
    message: str
    http_status: int | None
    request_id: str | None
    duration: float
    retry_after: float | None = None
    """Seconds the API asked us to wait (`x-acs-retry-after`), when it said so."""
    maybe_applied: bool = False
    """The request may have reached the API and been applied, now or later, though we saw a
    failure (a timeout, a dropped connection, a 5xx): with no idempotency token, only reading
    the call back or writing the newest tags again settles it."""


ApiResult = ApiSuccess | ApiFailure
