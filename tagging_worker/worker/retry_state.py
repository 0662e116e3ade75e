"""What an event carries from one attempt to the next, inside its own message (pure).

The history rides in every copy of the event's message and ends up in its dead letter, and
attempts that do not count (throttled, circuit open) can pile up for the event's whole
maximum age. So only the first attempt and the latest `KEEP_LAST` are kept, with counts of
everything, and every text is clipped: beyond `received` (carried as it came), a state
stays under about 10 kB of JSON whatever happens to the event.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

from tagging_worker.alibaba.classify import FailureKind
from tagging_worker.alibaba.results import ApiFailure
from tagging_worker.state.dead_letters import Attempt

KEEP_LAST = 10
"""Latest attempts kept besides the first: the first and the last are what an operator
reading a dead letter needs; the ones between are counted by kind."""
MESSAGE_LIMIT = 500
"""Bytes of an attempt's error message, as UTF-8 JSON."""
FIELD_LIMIT = 100
"""Bytes of an attempt's error code or request id, as UTF-8 JSON."""
UNKNOWN_KIND = "unknown"
"""The kind of a carried attempt whose kind this worker does not know."""
COUNT_CEILING = 10**9
"""Carried counters are clamped here: far above any real count, and small in JSON."""

_KINDS = frozenset(kind.value for kind in FailureKind)


@dataclass(frozen=True)
class RetryState:
    """An event's attempt history: the first and latest attempts, and exact counts."""

    received: Any
    first_seen: float
    attempts: list[dict[str, Any]] = field(default_factory=list)
    """The first attempt and the latest `KEEP_LAST`, oldest first."""
    attempts_made: int = 0
    """Every attempt, kept or elided: the attempt number for backoff and logs."""
    attempts_used: int = 0
    """Attempts that count against the event's limit, kept or elided."""
    elided_kinds: dict[str, int] = field(default_factory=dict)
    """How many attempts of each kind were elided between the first and the latest."""

    def __post_init__(self) -> None:
        if not (
            len(self.attempts) <= 1 + KEEP_LAST
            and 0 <= self.attempts_used <= self.attempts_made
            and self.elided >= 0
            and sum(self.elided_kinds.values()) == self.elided
        ):
            raise ValueError(f"inconsistent retry state: {self.counts}")

    @classmethod
    def resume(cls, carried: Any, raw: Any, now: float) -> RetryState:
        """The state a message carries, or a fresh one for `raw` first seen `now`.

        `carried` comes from a message anybody can send, or one queued by an older worker
        (only `received`, `first_seen` and an untrimmed `attempts` list), so this never
        raises: a state that is not a dict starts afresh, a `first_seen` that is not a
        finite number becomes `now`, attempts that are not dicts are skipped and the rest
        are clipped and trimmed like new ones, and counters that are missing or do not
        add up with the attempts are derived from them (an attempt that does not say it
        was uncharged counts against the limit, so a forged message earns no extra tries).
        """
        if not carried or not isinstance(carried, dict):
            return cls(received=raw, first_seen=now)
        first_seen = _finite(carried.get("first_seen"), now)
        listed = carried.get("attempts")
        attempts = [
            _attempt(item, first_seen)
            for item in (listed if isinstance(listed, list) else [])
            if isinstance(item, dict)
        ]
        made = _count(carried.get("attempts_made"))
        used = _count(carried.get("attempts_used"))
        elided = max(made - len(attempts), 0) if made is not None else 0
        charged = sum(attempt["charged"] for attempt in attempts)
        state = cls(
            received=carried.get("received", raw),
            first_seen=first_seen,
            attempts_made=elided,
            attempts_used=elided if used is None else min(max(used - charged, 0), elided),
            elided_kinds=_kinds(carried.get("elided_kinds"), elided),
        )
        for attempt in attempts:
            state = state._with(attempt)
        return state

    @property
    def elided(self) -> int:
        """Attempts made but no longer listed: they fell between the first and the latest."""
        return self.attempts_made - len(self.attempts)

    @property
    def counts(self) -> dict[str, Any]:
        """The counters, for a reader of the message or dead letter to see what was elided."""
        return {
            "attempts_made": self.attempts_made,
            "attempts_used": self.attempts_used,
            "elided": self.elided,
            "elided_kinds": dict(self.elided_kinds),
        }

    def after(self, failure: ApiFailure, at: float, *, charged: bool) -> RetryState:
        item = {
            "at": at,
            "code": failure.code,
            "message": failure.message,
            "http_status": failure.http_status,
            "request_id": failure.request_id,
            "kind": failure.kind.value,
            "charged": charged,
            "maybe_applied": bool(getattr(failure, "maybe_applied", False)),
        }
        # Through the same clipping as a carried attempt, so a resumed state equals this one.
        return self._with(_attempt(item, at))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; `elided` is for readers, `resume` derives it from the counters."""
        return {
            "received": self.received,
            "first_seen": self.first_seen,
            "attempts": self.attempts,
            **self.counts,
        }

    def _with(self, attempt: dict[str, Any]) -> RetryState:
        attempts = [*self.attempts, attempt]
        kinds = self.elided_kinds
        if len(attempts) > 1 + KEEP_LAST:
            dropped = attempts.pop(1)["kind"]
            kinds = {**kinds, dropped: kinds.get(dropped, 0) + 1}
        return replace(
            self,
            attempts=attempts,
            attempts_made=self.attempts_made + 1,
            attempts_used=self.attempts_used + int(attempt["charged"]),
            elided_kinds=kinds,
        )


def _attempt(item: dict[str, Any], default_at: float) -> dict[str, Any]:
    status, request_id = item.get("http_status"), item.get("request_id")
    attempt = Attempt(
        at=_finite(item.get("at"), default_at),
        code=_text(item.get("code"), FIELD_LIMIT),
        message=_text(item.get("message"), MESSAGE_LIMIT),
        http_status=status if _count(status) is not None and status < 1000 else None,
        request_id=_text(request_id, FIELD_LIMIT) if isinstance(request_id, str) else None,
        kind=_kind(item.get("kind")),
        charged=item.get("charged") is not False,
        maybe_applied=item.get("maybe_applied") is True,
    )
    return attempt.as_dict()


def _text(value: Any, limit: int) -> str:
    """At most `limit` bytes as UTF-8 JSON, the form it travels in: counting characters
    would not do, as an escaped control character takes six bytes."""
    text = value.encode("utf-8", "replace").decode() if isinstance(value, str) else ""
    if _json_bytes(text) <= limit:
        return text
    marker = f"...[{len(text)} chars in all]"
    room = limit - len(marker)
    kept: list[str] = []
    for char in text:
        room -= _json_bytes(char)
        if room < 0:
            break
        kept.append(char)
    return "".join(kept) + marker


def _json_bytes(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _kind(value: Any) -> str:
    return value if isinstance(value, str) and value in _KINDS else UNKNOWN_KIND


def _kinds(value: Any, elided: int) -> dict[str, int]:
    """The carried per-kind counts, if they account for exactly the elided attempts."""
    counts: dict[str, int] = {}
    for kind, n in value.items() if isinstance(value, dict) else ():
        if n := _count(n):
            counts[_kind(kind)] = counts.get(_kind(kind), 0) + n
    if sum(counts.values()) == elided:
        return counts
    return {UNKNOWN_KIND: elided} if elided else {}


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, COUNT_CEILING)


def _finite(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    try:
        number = float(value)
    except OverflowError:
        return default
    return number if math.isfinite(number) else default
