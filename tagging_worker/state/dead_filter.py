"""Which dead letters an operator means (pure): the filters of `dead list/replay/purge/export`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, *, now: float) -> float:
    """A point in time as Unix seconds: ISO-8601 (no zone means UTC), or an age such as
    `30m`, `2h`, `7d` meaning that long before `now`."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        return now - float(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an ISO-8601 time nor an age like 30m, 2h or 7d"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def last_code(record: dict[str, Any]) -> str | None:
    """The error code a record died of: its last attempt's (None: it never reached the API).
    Never raises: the store also indexes records nobody checked (a restore), by this code."""
    attempts = record.get("attempts")
    last = attempts[-1] if isinstance(attempts, list) and attempts else None
    code = last.get("code") if isinstance(last, dict) else None
    return code if isinstance(code, str) else None


@dataclass(frozen=True)
class DeadFilter:
    reason: str | None = None
    code: str | None = None
    call_id: str | None = None
    source: str | None = None
    since: float | None = None
    """Died at or after (Unix seconds)."""
    until: float | None = None
    """Died before (Unix seconds)."""

    @property
    def empty(self) -> bool:
        return all(value is None for value in vars(self).values())

    def matches(self, record: dict[str, Any]) -> bool:
        """A record without a usable time of death matches no time filter."""
        died = record.get("died_at")
        known = isinstance(died, (int, float)) and math.isfinite(died)
        return (
            (self.reason is None or record.get("reason") == self.reason)
            and (self.code is None or last_code(record) == self.code)
            and (self.call_id is None or record.get("call_id") == self.call_id)
            and (self.source is None or record.get("source") == self.source)
            and (self.since is None or (known and died >= self.since))
            and (self.until is None or (known and died < self.until))
        )

    def describe(self) -> str:
        parts = [f"{name}={value}" for name, value in vars(self).items() if value is not None]
        return ", ".join(parts) or "all"
